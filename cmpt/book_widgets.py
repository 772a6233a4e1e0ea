"""Widgets frozen for the page: each widget output replaced by the static outputs it showed.

The built book loads no widget script, so an executed chapter's widgets (a slider's plot, an
output area, a label) are written out as the outputs they displayed when the page ran, with
a one-line note of the control values it was computed at; progress bars are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["WIDGET_STATE", "WIDGET_VIEW", "freeze_widgets"]


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_PROGRESS_MODELS = ("FloatProgressModel", "IntProgressModel")


def freeze_widgets(nb: Any) -> int:
    """Replace every widget output by the static outputs it showed; drop the widget state (in place).

    A page has no kernel, so a widget there could only show its saved state: an ``Output``
    widget becomes the outputs it held, a control (a dropdown, a slider) a line naming its value,
    and a progress bar disappears. No widget JavaScript is then needed to read the page.
    Returns how many widget outputs were frozen.
    """
    import nbformat

    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    frozen = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(output)
                continue
            frozen += 1
            outputs.extend(nbformat.from_dict(o) for o in _static_outputs(str(view.get("model_id", "")), state))
        cell["outputs"] = outputs
    nb.get("metadata", {}).pop("widgets", None)
    return frozen


def _widget_tree(model_id: str, state: Mapping[str, Any], depth: int = 0) -> Iterator[dict[str, Any]]:
    """The models under ``model_id`` in display order (containers first, then their children)."""
    model = state.get(model_id)
    if model is None or depth > 32:
        return
    yield model
    for child in model.get("state", {}).get("children", []) or []:
        yield from _widget_tree(str(child).removeprefix("IPY_MODEL_"), state, depth + 1)


def _control_value(widget: Mapping[str, Any]) -> Any:
    labels = widget.get("_options_labels")
    if labels is not None:
        index = widget.get("index")
        if isinstance(index, int) and 0 <= index < len(labels):
            return labels[index]
        if isinstance(index, (list, tuple)):
            return ", ".join(str(labels[i]) for i in index if isinstance(i, int) and 0 <= i < len(labels))
        return None
    value = widget.get("value")
    return value if isinstance(value, (str, int, float, bool)) else None


def _static_outputs(model_id: str, state: Mapping[str, Any]) -> list[dict[str, Any]]:
    models = list(_widget_tree(model_id, state))
    if any(m.get("model_name") in _PROGRESS_MODELS for m in models):
        return []  # a progress bar
    controls, shown = [], []
    for model in models:
        name, widget = model.get("model_name", ""), model.get("state", {})
        if name == "OutputModel":
            shown.extend(widget.get("outputs", []))
        elif name in ("HTMLModel", "HTMLMathModel") and widget.get("value"):
            shown.append({"output_type": "display_data", "metadata": {}, "data": {"text/html": widget["value"]}})
        elif name == "LabelModel" and widget.get("value"):
            shown.append({"output_type": "display_data", "metadata": {},
                          "data": {"text/plain": str(widget["value"])}})
        elif "children" not in widget:
            value = _control_value(widget)
            if value is not None and widget.get("description"):
                controls.append(f"{widget['description']} `{value}`")
    if controls:
        caption = f"*Interactive in JupyterLab; shown here with* {', '.join(controls)}."
        shown.insert(0, {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": caption}})
    return shown
