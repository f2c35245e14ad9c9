"""Prompt wordings: how each label becomes the text(s) whose embedding is its query.

Wordings are data, as in open_clip's zero-shot templates:

- `raw`: the label as words ("outdoor cathedral", "bakery shop"), the study's first try;
- `natural`: the study's adaptation, one sentence per label ("A photo of a bakery
  shop", "A photo of the outdoor of a cathedral"); a label file's own `prompt`
  column wins over it;
- `ensemble`: several templates, their embeddings averaged (CLIP's prompt
  ensembling), plus a scene template for labels the indoor/outdoor table knows
  and whose name does not already say it;
- templates of the user's: a file with one template a line, or one inline
  template. `{label}` (or `{}`) is the readable label, `{a}` its article.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .labels import LabelSet, read_text_any, readable

RAW, NATURAL, ENSEMBLE = "raw", "natural", "ensemble"
BUILTIN = (RAW, NATURAL, ENSEMBLE)

# Chosen for scenes in social-media photos, after CLIP's ImageNet/SUN397 templates.
ENSEMBLE_TEMPLATES = (
    "a photo of {a} {label}.",
    "a photo of the {label}.",
    "a picture of {a} {label}.",
    "a bright photo of {a} {label}.",
    "a dark photo of {a} {label}.",
    "a blurry photo of {a} {label}.",
    "a cropped photo of {a} {label}.",
    "a photo of {a} {label} taken with a phone.",
)
SCENE_TEMPLATES = {
    "indoor": "a photo of the inside of {a} {label}.",
    "outdoor": "a photo of {a} {label}, outdoors.",
}


class PromptError(InputError, ValueError):
    """A wording that cannot be used (unknown name, template without a label slot)."""


@dataclass(frozen=True)
class Wording:
    name: str                          # raw | natural | ensemble | a templates file | an inline template
    templates: tuple[str, ...] = ()    # user templates (empty for the built-in wordings)


def resolve(spec: str | Path) -> Wording:
    """A built-in wording by name, a templates file, or one inline template."""
    spec = str(spec)
    if spec in BUILTIN:
        return Wording(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        lines = [ln.strip() for ln in read_text_any(path).splitlines()]
        templates = tuple(ln for ln in lines if ln and not ln.startswith("#"))
        if not templates:
            raise PromptError(f"templates file {spec} has no templates")
    elif "{" in spec:
        templates = (spec,)
    else:
        raise PromptError(f"unknown prompts '{spec}': use {', '.join(BUILTIN)}, a templates file "
                          "(one a line, with {label}), or an inline template such as 'a photo of {a} {label}.'")
    for t in templates:
        if "{label}" not in t and "{}" not in t:
            raise PromptError(f"template {t!r} has no place for the label: write {{label}} (or {{}})")
    return Wording(spec, templates)


def prompts_for(label_set: LabelSet, wording: Wording | str) -> list[list[str]]:
    """The prompt texts of every label, in label order (several when they are averaged)."""
    w = wording if isinstance(wording, Wording) else resolve(wording)
    out = []
    for label, own, scene in zip(label_set.labels, label_set.prompts, label_set.scenes, strict=True):
        if w.templates:
            out.append([fill(t, label) for t in w.templates])
        elif w.name == RAW:
            out.append([readable(label)])
        elif w.name == NATURAL:
            out.append([own or natural(label)])
        else:
            out.append(ensemble(label, scene, own))
    return out


def natural(label: str) -> str:
    """The study's sentence: "A photo of a bakery shop", "A photo of the outdoor of a cathedral"."""
    head, _, qualifier = label.partition("/")
    head = head.replace("_", " ").strip()
    if qualifier == "outdoor":
        return f"A photo of the outdoor of {article(head)} {head}"
    if qualifier == "indoor":
        return f"A photo of the inside of {article(head)} {head}"
    words = readable(label)
    return f"A photo of {article(words)} {words}"


def ensemble(label: str, scene: str, own: str | None = None) -> list[str]:
    texts = [fill(t, label) for t in ENSEMBLE_TEMPLATES]
    # The scene template adds what the name does not say; "outdoor cathedral" says it.
    if scene in SCENE_TEMPLATES and label.partition("/")[2] not in ("indoor", "outdoor"):
        texts.append(fill(SCENE_TEMPLATES[scene], label))
    if own:
        texts.append(own)
    return texts


_SLOT = re.compile(r"\{a\}|\{label\}|\{\}")


def fill(template: str, label: str) -> str:
    words = readable(label)
    # One pass, not str.format or chained replace: the template may hold other braces, and a
    # label's own braces (`room/{x}`, `{}`) are text to show, never slots to fill again.
    return _SLOT.sub(lambda m: article(words) if m.group() == "{a}" else words, template)


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" and phrase[:1] else "a"
