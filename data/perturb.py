"""Test-time perturbations for robustness sweeps (``test.py --perturb``).

A sweep is written as settings separated by ``;``. A setting is one or more steps joined
by ``+``, and a step is ``kind:value``. A kind with several comma-separated values expands
into one setting per value:

    jpeg:95,75,50          three settings: JPEG quality 95, 75, 50
    blur:1,2               Gaussian blur, sigma 1 and 2
    resize:0.5             down-scale by 0.5 (bilinear), then back up to the original size
    jpeg:75+blur:1         one combined setting (applied left to right)
    none                   the clean images

The perturbation hits every test image of both classes, before the evaluation transform.
"""
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from util import UserError

from .augment import gaussian_blur, jpeg_compress


@dataclass(frozen=True)
class Kind:
    """A perturbation kind: how it changes an image, which values it takes, and how a sweep
    over it is drawn (its clean value, the axis label, whether larger values are milder)."""
    name: str
    apply: Callable  # (PIL image, value) -> PIL image
    valid: Callable  # value -> bool
    rule: str        # what ``valid`` asks, for the error
    clean: float     # the value that leaves an image as it is: the sweep's clean point
    label: str       # the sweep plot's axis
    milder_above: bool  # larger values are milder (the plot's axis is inverted: stronger to the right)


def down_up(img, scale):
    """Down-scale by ``scale`` (bilinear), then back up to the original size."""
    w, h = img.size
    small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return small.resize((w, h), Image.BILINEAR)


KINDS = {k.name: k for k in (
    Kind("jpeg", lambda img, v: jpeg_compress(img, int(v), "pil"), lambda v: 1 <= v <= 100 and v == int(v),
         "JPEG quality must be an integer in 1..100", 100.0, "JPEG quality", True),
    Kind("blur", lambda img, v: gaussian_blur(img, v) if v > 0 else img, lambda v: v >= 0,
         "blur sigma must be >= 0", 0.0, "blur sigma", False),
    Kind("resize", down_up, lambda v: 0 < v <= 1, "resize scale must lie in (0, 1]", 1.0, "resize scale", True),
)}


@dataclass(frozen=True)
class Perturbation:
    steps: tuple  # ((kind, value), ...)

    @property
    def name(self):
        return "+".join(f"{k}:{v:g}" for k, v in self.steps) or "none"

    def __call__(self, img):
        for kind, value in self.steps:
            img = KINDS[kind].apply(img, value)
        return img


def _check(kind, value, text):
    if kind not in KINDS:
        raise UserError(f"--perturb '{text}': unknown kind '{kind}'; use {', '.join(KINDS)} (e.g. jpeg:75)")
    if not KINDS[kind].valid(value):
        raise UserError(f"--perturb '{text}': {KINDS[kind].rule}")


def parse_perturbations(text):
    """``--perturb`` text -> list of ``Perturbation`` (see the module docstring)."""
    out = []
    for setting in (s.strip() for s in text.split(";") if s.strip()):
        if setting.lower() == "none":
            out.append(Perturbation(()))
            continue
        parts = [p.strip() for p in setting.split("+")]
        parsed = []
        for p in parts:
            if ":" not in p:
                raise UserError(f"--perturb '{text}': expected kind:value, got '{p}'")
            kind, values = p.split(":", 1)
            try:
                vals = [float(v) for v in values.split(",") if v.strip()]
            except ValueError:
                raise UserError(f"--perturb '{text}': '{values}' is not a number list") from None
            for v in vals:
                _check(kind.strip().lower(), v, text)
            parsed.append((kind.strip().lower(), vals))
        if len(parsed) == 1:
            out += [Perturbation(((parsed[0][0], v),)) for v in parsed[0][1]]
        else:
            if any(len(v) != 1 for _, v in parsed):
                raise UserError(f"--perturb '{text}': a combination (a+b) takes one value per kind")
            out.append(Perturbation(tuple((k, v[0]) for k, v in parsed)))
    if not out:
        raise UserError("--perturb is empty; e.g. --perturb 'jpeg:95,75,50;blur:1,2'")
    return out
