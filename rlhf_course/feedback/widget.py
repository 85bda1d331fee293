"""The labelling widget: the labelling session shown in a notebook with ipywidgets.

    widget = labelling_widget(pairs, "my_labels.jsonl")   # end a cell with it: buttons A / B / tie / skip

The prompt, answers A and B side by side, the buttons, a "much better" box, undo and a progress bar.
Every button calls the session (`feedback.session`), which writes the label to disk before the view
updates. Only core ipywidgets are used, so it also runs with Colab's ipywidgets 7 (docs/colab.md).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Iterable

from rlhf_course import toyworld
from rlhf_course.feedback.label_file import Label, LabelFileError, LabelSaveError
from rlhf_course.feedback.pairs import Pair
from rlhf_course.feedback.session import LabellerFn, LabellingSession, _as_decision


class LabellingWidget:
    """The labelling session in a notebook: the prompt, answers A and B side by side, buttons
    A better / B better / tie / skip, a "much better" box, undo, and a progress bar. A thin view:
    every button calls the session, which writes the label to disk before the view updates."""

    def __init__(self, session: LabellingSession):
        import ipywidgets as w

        self.session = session
        self.prompt = w.HTML()
        self.answers = [w.HTML(layout=w.Layout(width="50%", border="1px solid #bbb", padding="6px")) for _ in "ab"]
        self.much_better = w.Checkbox(value=False, description="much better", indent=False)
        self.buttons = {
            "a": w.Button(description="A is better", button_style="primary"),
            "b": w.Button(description="B is better", button_style="primary"),
            "tie": w.Button(description="tie"),
            "skip": w.Button(description="skip"),
        }
        self.undo_button = w.Button(description="undo", icon="undo")
        for decision, button in self.buttons.items():
            button.on_click(lambda _, d=decision: self.click(d))
        self.undo_button.on_click(lambda _: self.undo())
        self.bar = w.IntProgress(min=0, max=max(1, session.progress[1]), description="progress")
        self.status = w.HTML()
        self.box = w.VBox([
            self.prompt, w.HBox(self.answers),
            w.HBox([*self.buttons.values(), self.much_better, self.undo_button]),
            w.HBox([self.bar, self.status]),
        ])
        self.refresh()

    def _repr_mimebundle_(self, **kwargs):  # `display(widget)` shows the box
        if hasattr(self.box, "_repr_mimebundle_"):  # ipywidgets 8
            return self.box._repr_mimebundle_(**kwargs)
        # ipywidgets 7 (Colab's: its widget manager renders 7, not 8): the view that 7's display sends
        return {"text/plain": repr(self.box), "application/vnd.jupyter.widget-view+json":
                {"version_major": 2, "version_minor": 0, "model_id": self.box._model_id}}

    def refresh(self) -> None:
        pair, (done, total) = self.session.current, self.session.progress
        self.shown = pair
        self.bar.value = done
        note = f" (resumed: {self.session.resumed} already labelled)" if self.session.resumed else ""
        self.status.value = f"{done} / {total} labelled{note} &mdash; saved to <code>{html.escape(str(self.session.path))}</code>"
        for button in self.buttons.values():
            button.disabled = pair is None
        self.undo_button.disabled = not self.session.history
        if pair is None:
            self.prompt.value = "<b>All pairs are labelled. Thank you!</b>"
            for box in self.answers:
                box.value = ""
            return
        text = html.escape(toyworld.prompt_text(pair.prompt))
        self.prompt.value = f"<b>Prompt:</b> {text}<br>Which answer is better?"
        for box, name, answer in zip(self.answers, "AB", (pair.answer_a, pair.answer_b)):
            box.value = f"<b>{name}</b><br>{html.escape(answer)}"

    def click(self, decision: str) -> Label | None:
        """What a button does: record the decision about the pair shown (with the "much better" box),
        then show the next pair. A label that cannot be saved is said in red; the pair stays shown."""
        try:
            label = self.session.record(decision, self.much_better.value and decision in ("a", "b"), pair=self.shown)
        except (LabelSaveError, LabelFileError) as err:
            self._show_error(err)
            return None
        self.much_better.value = False
        self.refresh()
        return label

    def undo(self) -> Label | None:
        try:
            label = self.session.undo()
        except (LabelSaveError, LabelFileError) as err:
            self._show_error(err)
            return None
        self.refresh()
        return label

    def _show_error(self, err: Exception) -> None:
        self.status.value = f'<b style="color:#b00020">{html.escape(str(err))}</b>'

    def autolabel(self, labeller: LabellerFn, limit: int | None = None) -> int:
        """Let a function press the buttons (how the stored notebook run and the tests drive the widget)."""
        n = 0
        while self.shown is not None and (limit is None or n < limit):
            decision, much_better = _as_decision(labeller(self.shown))
            self.much_better.value = much_better
            if self.click(decision) is None:  # not saved: the widget says why
                break
            n += 1
        return n


def labelling_widget(pairs: Iterable[Pair], path: str | Path, labeller: str | None = None) -> LabellingWidget:
    """A labelling widget on a (new or resumed) label file: end a notebook cell with it to show it."""
    return LabellingWidget(LabellingSession(pairs, path, labeller))
