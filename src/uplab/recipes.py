"""The released recipes of the paper settings, transcribed field by field, and the check that a
paper row composes to its recipe.

``reference/recipes/<setting>.yaml`` holds one setting (``segformer_b1_ade20k``,
``a2u_matting_r34_comp1k``, ``bts_r50_nyuv2``, ``faster_rcnn_r50_fpn_coco``): the released
sources it was read from and, for every aspect in :data:`ASPECTS`, one entry or a list of
entries::

    sources:
      config: {repo: NVlabs/SegFormer, path: local_configs/segformer/B1/segformer.b1.512x512.ade.160k.py}
    aspects:
      optimizer:
        released: "optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01)"
        source: config                       # a key of sources
        config:                              # composed-config key -> the value every row has
          task.optimizer.optimizer._target_: torch.optim.AdamW
          task.optimizer.lr: 6.0e-5
      loss:
        released: "CrossEntropyLoss, mean over all pixels (ignored ones count 0)"
        source: mmseg_loss
        tests: [tests/tasks/test_segmentation.py::test_cross_entropy_averages_over_all_pixels]
      pad:
        released: "Pad(size=(512, 512), pad_val=0, seg_pad_val=255) after Normalize"
        source: config
        deviation: "why uplab differs, and what it does instead"
        config: {data.train_pipeline.pad_value: 0}

An entry says what the release does (``released``, in the release's own words) and where
(``source``), and how uplab holds it: ``config`` (keys of the row's composed config, checked for
every row, or for the rows named in ``rows`` by their upsampler; a value may use the config's
resolvers, e.g. ``${uplab.weights:mit_b1}``), ``tests`` (pytest node ids of the tests that check
behaviour that is code, not config), or both. An entry with ``deviation``
records a difference that stays: its ``config`` holds uplab's values, and the deviation is listed
in docs/datasets.md (``python -m uplab.recipes --deviations``) and under the paper tables.
``tests/test_recipes.py`` composes every row against its recipe.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Every recipe covers these aspects (issue 17's list, in the order a recipe reads).
ASPECTS = (
    "initial_weights",
    "frozen",
    "init",
    "optimizer",
    "param_groups",
    "schedule",
    "iterations",
    "batch",
    "resize",
    "crop",
    "flip",
    "photometric",
    "normalisation",
    "pad",
    "ignore",
    "loss",
    "eval_mode",
    "eval_resize",
    "eval_crop",
    "eval_caps",
    "metric",
    "eval_interval",
    "reporting",
)
ENTRY_KEYS = {"released", "source", "where", "config", "tests", "rows", "deviation", "note"}


def checkout_root() -> Path:
    """The source checkout (``reference/`` and ``conf/`` sit beside ``src/``)."""
    return Path(__file__).resolve().parents[2]


def recipes_dir() -> Path:
    return checkout_root() / "reference" / "recipes"


def paper_dir() -> Path:
    return checkout_root() / "conf" / "experiment" / "paper"


@dataclass(frozen=True)
class Entry:
    """One transcribed field of a released recipe."""

    aspect: str
    released: str
    source: str
    where: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tests: tuple[str, ...] = ()
    rows: tuple[str, ...] | None = None
    deviation: str | None = None
    note: str | None = None

    def applies_to(self, upsampler: str) -> bool:
        return self.rows is None or upsampler in self.rows


@dataclass(frozen=True)
class Recipe:
    setting: str
    title: str
    sources: dict[str, dict[str, str]]
    entries: tuple[Entry, ...]
    path: Path

    def rows(self) -> list[str]:
        """The upsamplers of the setting's paper rows (``<upsampler>_<setting>.yaml``)."""
        suffix = f"_{self.setting}"
        return sorted(
            p.stem[: -len(suffix)]
            for p in paper_dir().glob(f"*{suffix}.yaml")
            if not p.stem.startswith("_")
        )

    def deviations(self) -> list[Entry]:
        return [e for e in self.entries if e.deviation]


class RecipeError(ValueError):
    """A recipe file that does not follow the format of this module's docstring."""


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def load_recipe(path: Path) -> Recipe:
    """Read and validate one ``reference/recipes/<setting>.yaml``.

    Raises:
        RecipeError: naming the file and what is wrong (an unknown or missing aspect, an entry
            without ``released``/``source`` or without ``config``/``tests``, an unknown source).
    """
    raw = yaml.safe_load(path.read_text())
    where = path.name
    for key in ("setting", "title", "sources", "aspects"):
        if key not in raw:
            raise RecipeError(f"{where}: expected a top-level '{key}'")
    sources = raw["sources"]
    aspects = raw["aspects"]
    unknown = sorted(set(aspects) - set(ASPECTS))
    missing = [a for a in ASPECTS if a not in aspects]
    if unknown or missing:
        raise RecipeError(
            f"{where}: aspects must be exactly uplab.recipes.ASPECTS; unknown {unknown}, missing {missing}"
        )
    entries = []
    for aspect in ASPECTS:
        for i, item in enumerate(_as_list(aspects[aspect])):
            label = f"{where}: {aspect}[{i}]"
            if not isinstance(item, dict):
                raise RecipeError(f"{label}: expected a mapping, got {item!r}")
            extra = sorted(set(item) - ENTRY_KEYS)
            if extra:
                raise RecipeError(f"{label}: unknown keys {extra}; allowed {sorted(ENTRY_KEYS)}")
            if not item.get("released") or not item.get("source"):
                raise RecipeError(f"{label}: 'released' and 'source' are required")
            if item["source"] not in sources:
                raise RecipeError(
                    f"{label}: source {item['source']!r} is not one of {sorted(sources)}"
                )
            if not item.get("config") and not item.get("tests"):
                raise RecipeError(f"{label}: give 'config' keys or 'tests' that hold the field")
            rows = item.get("rows")
            entries.append(
                Entry(
                    aspect=aspect,
                    released=str(item["released"]),
                    source=item["source"],
                    where=item.get("where"),
                    config=dict(item.get("config") or {}),
                    tests=tuple(item.get("tests") or ()),
                    rows=None if rows is None else tuple(rows),
                    deviation=item.get("deviation"),
                    note=item.get("note"),
                )
            )
    return Recipe(raw["setting"], raw["title"], sources, tuple(entries), path)


def load_recipes(directory: Path | None = None) -> list[Recipe]:
    return [load_recipe(p) for p in sorted((directory or recipes_dir()).glob("*.yaml"))]


def values_equal(actual: Any, expected: Any) -> bool:
    """Config equality with floats compared to 1e-9 relative (YAML's 6.0e-5 vs 0.00006)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, float) or isinstance(actual, float):
        numbers = all(isinstance(v, (int, float)) for v in (actual, expected))
        return numbers and math.isclose(actual, expected, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(actual, (list, tuple))
            and len(actual) == len(expected)
            and all(values_equal(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and set(actual) == set(expected)
            and all(values_equal(actual[k], expected[k]) for k in expected)
        )
    return actual == expected


_MISSING = object()


def select(cfg: Any, key: str) -> Any:
    """``key`` (dotted) of a resolved config container, or a sentinel when absent."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def resolved(value: Any) -> Any:
    """A recipe value with its ``${...}`` interpolations resolved as a row's are (e.g.
    ``${uplab.weights:torchvision_resnet50}``, the cache path of a manifest entry)."""
    if isinstance(value, str) and "${" in value:
        from omegaconf import OmegaConf

        import uplab  # noqa: F401  (registers the uplab.* resolvers)

        return OmegaConf.create({"value": value}).value
    return value


def row_mismatches(recipe: Recipe, upsampler: str, cfg: dict) -> list[str]:
    """Every config field of ``recipe`` that the row's resolved config (``OmegaConf.to_container(
    cfg, resolve=True)``) does not hold, as ``aspect: key = actual, recipe says expected``."""
    problems = []
    for entry in recipe.entries:
        if not entry.applies_to(upsampler):
            continue
        for key, expected in entry.config.items():
            expected = resolved(expected)
            actual = select(cfg, key)
            if actual is _MISSING:
                problems.append(f"{entry.aspect}: {key} is absent, recipe says {expected!r}")
            elif not values_equal(actual, expected):
                problems.append(f"{entry.aspect}: {key} = {actual!r}, recipe says {expected!r}")
    return problems


_NODE = re.compile(r"^(?P<path>[^:]+\.py)::(?:(?P<cls>\w+)::)?(?P<name>\w+)(?:\[.*\])?$")


def missing_tests(recipe: Recipe, root: Path | None = None) -> list[str]:
    """The ``tests`` node ids of ``recipe`` whose file or test function does not exist."""
    root = root or checkout_root()
    missing = []
    for entry in recipe.entries:
        for node in entry.tests:
            match = _NODE.match(node)
            path = root / match["path"] if match else None
            if not match or not path.is_file():
                missing.append(f"{entry.aspect}: {node} (no such file)")
            elif not re.search(rf"^\s*def {match['name']}\(", path.read_text(), re.MULTILINE):
                missing.append(
                    f"{entry.aspect}: {node} (no test {match['name']} in {match['path']})"
                )
    return missing


def deviations_markdown(recipes: Iterable[Recipe]) -> str:
    """The deviations that remain, one table per setting (docs/datasets.md and the paper tables)."""
    blocks = []
    for recipe in recipes:
        lines = [f"**{recipe.title}** (`reference/recipes/{recipe.path.name}`)", ""]
        deviations = recipe.deviations()
        if not deviations:
            lines.append("No deviation.")
        else:
            lines += ["| aspect | released | uplab, and why |", "| --- | --- | --- |"]
            for e in deviations:
                rows = "" if e.rows is None else f" (rows: {', '.join(e.rows)})"
                cell = lambda s: " ".join(str(s).split()).replace("|", "\\|")  # noqa: E731
                lines.append(f"| {e.aspect}{rows} | {cell(e.released)} | {cell(e.deviation)} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


DOC_START = "<!-- recipe-deviations:start (python -m uplab.recipes --write-docs) -->"
DOC_END = "<!-- recipe-deviations:end -->"


def docs_path() -> Path:
    return checkout_root() / "docs" / "datasets.md"


def documented_deviations(text: str) -> str | None:
    """The generated block of docs/datasets.md, or None when its markers are absent."""
    if DOC_START not in text or DOC_END not in text:
        return None
    return text.split(DOC_START, 1)[1].split(DOC_END, 1)[0].strip("\n") + "\n"


def write_docs(recipes: Sequence[Recipe], path: Path | None = None) -> Path:
    path = path or docs_path()
    text = path.read_text()
    if documented_deviations(text) is None:
        raise RecipeError(f"{path}: expected the markers {DOC_START!r} and {DOC_END!r}")
    head, rest = text.split(DOC_START, 1)
    tail = rest.split(DOC_END, 1)[1]
    path.write_text(f"{head}{DOC_START}\n{deviations_markdown(recipes)}{DOC_END}{tail}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The paper settings' released recipes.")
    parser.add_argument("--deviations", action="store_true", help="print the remaining deviations")
    parser.add_argument(
        "--write-docs", action="store_true", help="rewrite docs/datasets.md's deviations block"
    )
    args = parser.parse_args(argv)
    recipes = load_recipes()
    if args.write_docs:
        print(write_docs(recipes))
    else:
        print(deviations_markdown(recipes), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
