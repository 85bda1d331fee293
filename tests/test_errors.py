"""Expected failures say what to do without a traceback; the Hub token is never shown; loading is safe."""

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import rlhf_course
from rlhf_course import errors
from rlhf_course.cli import main
from rlhf_course.loading import ModelLoadError, hub_token_and_source, load_tokenizer
from rlhf_course.profiles import Hardware, pick_profile, profile_7b

ROOT = Path(__file__).resolve().parent.parent
T4 = Hardware("cuda", "Tesla T4", 14.7, bf16=False, n_gpus=1, cpu_count=2)
HTTP_401 = types.SimpleNamespace(headers={}, request=None, status_code=401)  # what huggingface_hub's errors keep
FAKE_TOKEN = "hf_" + "Zq7" * 12  # looks like a real token; must never be printed or written


def test_require_names_both_versions_and_the_fix():
    rlhf_course.require("0.1.0")
    rlhf_course.require("0.0.9")
    with pytest.raises(errors.VersionError) as e:
        rlhf_course.require("0.2.0")
    assert str(e.value).startswith(f"this notebook needs rlhf-course >= 0.2.0, you have {rlhf_course.__version__}: run")
    assert "pip install -e ." in str(e.value) and errors.explain(e.value) == str(e.value)


def test_notebook_handler_shows_the_message_without_a_traceback(capsys, tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    assert errors.install_notebook_handler()
    capsys.readouterr()
    bad = tmp_path / "prefs.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\n{"prompt": "x", "chosen": "same", "rejected": "same"}\n')
    cells = {
        "pick_profile('7b', Hardware('cpu'))": "needs a CUDA GPU",                  # no GPU under the 7b profile
        f"load_preferences({str(bad)!r})": f"{bad}:1: rejected: missing field",     # a preference file with bad records
        "import torch; raise torch.cuda.OutOfMemoryError('CUDA out of memory')": "Settings that need less memory",
        "import rlhf_course; rlhf_course.require('9.0')": "needs rlhf-course >= 9.0",
    }
    shell.run_cell("from rlhf_course.profiles import pick_profile, Hardware\n"
                   "from rlhf_course.preferences import load_preferences")
    for code, expected in cells.items():
        result = shell.run_cell(code)
        out = capsys.readouterr()
        assert result.error_in_exec is not None, "the cell still fails: Run-all stops there"
        assert expected in out.out + out.err and "Traceback" not in out.out + out.err, code
    result = shell.run_cell("1 / 0")  # a bug keeps its traceback
    assert "Traceback" in capsys.readouterr().out and isinstance(result.error_in_exec, ZeroDivisionError)


def test_friendly_errors_exit_with_code_2_and_let_bugs_through(capsys):
    with pytest.raises(SystemExit) as e, errors.friendly_errors("script"):
        pick_profile("7b", Hardware("cpu"))
    assert e.value.code == 2 and capsys.readouterr().err.startswith("script: error: the 7b profile needs a CUDA GPU")
    with pytest.raises(KeyError), errors.friendly_errors():
        raise KeyError("a bug")
    with errors.friendly_errors():
        pass
    assert capsys.readouterr().err == ""


def test_cli_out_of_memory_is_a_message_naming_what_to_change(monkeypatch, tmp_path):
    import rlhf_course.runs

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")

    monkeypatch.setattr(rlhf_course.runs, "run_stage", oom)
    r = subprocess_free_main(["train", "dpo", "--out", str(tmp_path)])
    assert r[0] == 2
    assert r[2].startswith("rlhf-course train: error: CUDA out of memory")
    for setting in ("batch_size", "gradient_accumulation_steps", "max_prompt_length", "max_new_tokens",
                    "gradient_checkpointing", "lora_r", "rlhf-course memory"):
        assert setting in r[2], setting
    assert "Traceback" not in r[2]


def subprocess_free_main(argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def gated_error():
    """What transformers raises for a gated repo: an OSError caused by huggingface_hub's GatedRepoError."""
    from huggingface_hub.errors import GatedRepoError

    try:
        try:
            raise GatedRepoError("401 Client Error. Cannot access gated repo for url https://huggingface.co/x", response=HTTP_401)
        except GatedRepoError as cause:
            raise OSError("You are trying to access a gated repo.\nMake sure to have access to it.") from cause
    except OSError as err:
        return err


@pytest.mark.parametrize("token", [None, FAKE_TOKEN])
def test_gated_model_says_licence_and_token_and_never_shows_the_token(monkeypatch, capsys, token):
    from transformers import AutoTokenizer

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    passed = {}

    def from_pretrained(model_id, **kwargs):
        passed.update(kwargs)
        raise gated_error()

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)
    profile = profile_7b(T4, "test").replace(model_id="mistralai/Mistral-7B-Instruct-v0.3")
    with pytest.raises(ModelLoadError) as e:
        load_tokenizer(profile)
    message = str(e.value)
    assert "is gated on the Hugging Face Hub" in message and "accept its licence on https://huggingface.co/mistralai" in message
    assert ("the token found ($HF_TOKEN) has no access" if token else "no token was found") in message
    assert passed["token"] == token and passed["trust_remote_code"] is False
    assert FAKE_TOKEN not in message + str(capsys.readouterr())


def test_hub_unreachable_offline_and_unknown_model_messages(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    from rlhf_course.loading import _hub_error

    assert "HF_HUB_OFFLINE=1 forbids downloading" in str(_hub_error("org/m", OSError("We couldn't connect")))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert "could not be downloaded" in str(_hub_error("org/m", OSError("We couldn't connect")))
    try:
        raise OSError("org/m is not a local folder") from RepositoryNotFoundError("404", response=HTTP_401)
    except OSError as err:
        assert "is not a model on the Hugging Face Hub" in str(_hub_error("org/m", err))


def test_token_from_colab_secrets(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert hub_token_and_source() == (None, None)
    userdata = types.SimpleNamespace(get=lambda name: FAKE_TOKEN if name == "HF_TOKEN" else None)
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert hub_token_and_source() == (FAKE_TOKEN, "the Colab secret HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "hf_fromtheenvironment1234567890")
    assert hub_token_and_source()[1] == "$HF_TOKEN"


def test_a_token_never_appears_in_output_logs_checkpoints_or_notebooks(tmp_path):
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "OMP_NUM_THREADS": "1", "RLHF_COURSE_PROFILE": "tiny"}
    runs = [subprocess.run([sys.executable, "-m", "rlhf_course.cli", *args], env=env, capture_output=True, text=True,
                           timeout=300)
            for args in (["doctor"], ["train", "sft", "--out", str(tmp_path / "run"), "--max-steps", "2"],
                         ["generate", "--profile", "7b"])]
    assert runs[1].returncode == 0, runs[1].stderr[-2000:]
    for r in runs:
        assert FAKE_TOKEN not in r.stdout + r.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written) and any(p.suffix == ".safetensors" for p in written)
    for path in written:  # checkpoints, pickled training arguments, model cards, logs
        assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    token_like = re.compile(r"hf_[A-Za-z0-9]{30,}")
    for notebook in [*ROOT.glob("solutions/**/*.ipynb"), *ROOT.glob("notebooks/**/*.ipynb")]:
        assert not token_like.search(notebook.read_text()), f"{notebook} contains something like a Hub token"
    assert errors.redact(f"token {FAKE_TOKEN} here") == "token hf_*** here"


def test_a_t4_computes_in_fp16_and_keeps_fp32_adapters(tiny):
    from rlhf_course.sft import load_sft_data, train_sft, trl_common_args

    t4 = pick_profile("7b", T4)
    assert t4.compute_dtype == torch.float16 and "no bf16" in t4.reason and "LoRA weights stay fp32" in t4.reason
    args = trl_common_args(t4, 10, None, False)
    assert args["fp16"] and not args["bf16"] and not args["use_cpu"]
    # TRL casts a 4-bit model's adapter to bf16; without bf16 (a T4, or a CPU) train_sft keeps it in fp32
    r = train_sft(tiny.replace(batch_size=4), load_sft_data().select(range(8)), steps=1, load_in_4bit=True,
                  progress=False)
    assert {p.dtype for p in r.model.parameters() if p.requires_grad} == {torch.float32}


def test_loading_is_safetensors_only_and_without_remote_code(tiny, monkeypatch):
    from transformers import AutoModelForCausalLM

    from rlhf_course.loading import load_policy

    seen = {}
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, model_id, **kwargs):
        seen.update(kwargs)
        return original(cls, model_id, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_policy(tiny, lora=False, verbose=False)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False
    assert "token" not in seen, "a local folder is loaded without a Hub token"
    assert os.environ["HF_HUB_OFFLINE"] == "1", "the test suite runs off-line"
