"""Sphinx extension: the table of losses, their torch counterparts and adapters, read
from the registry (fastloss/_registry.py), so that a loss added there is listed here
without an edit to the docs.

``.. fastloss-losses::`` writes one row per registry entry: the NumPy function, the
counterpart it reproduces (``Torch.counterpart``, with ``Torch.note`` where the
semantics need a word), and the :mod:`fastloss.torch` function and module.
"""
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def _counterpart(entry):
    form = entry.torch
    if form is None or form.counterpart is None:
        text = "none in torch"
    else:
        text = "``" + form.counterpart.replace("torch.nn.functional.", "F.") + "``"
    note = form.note if form is not None else ""
    if not note:
        return text
    if text == "none in torch":
        return f"{text}: {note}"
    return f"{text} {note}" if note.startswith("(") else f"{text}, {note}"


def _adapter(entry):
    form = entry.torch
    if form is None or not form.function:
        return "none"
    text = f":func:`~fastloss.torch.{form.function}`"
    if form.module:
        text += f", :class:`~fastloss.torch.{form.module}`"
    return text


class LossTable(SphinxDirective):
    has_content = False

    def run(self):
        from fastloss import _registry

        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 25 45 30", "",
                 "   * - NumPy API", "     - torch counterpart",
                 "     - :mod:`fastloss.torch`"]
        for entry in _registry.LOSSES.values():
            lines += [f"   * - :func:`{entry.name}`", f"     - {_counterpart(entry)}",
                      f"     - {_adapter(entry)}"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="fastloss/_registry.py"),
                                self.content_offset, container)
        return container.children


def setup(app):
    app.add_directive("fastloss-losses", LossTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
