"""``uplab-cost``: parameters and GFLOPs of the papers' models with each upsampler, beside the
published numbers (``reference/paper_results.yaml``).

Each model is built as the papers ran it and counted at the published input size in the papers'
convention (:mod:`uplab.analysis.flops`). Published cost cells of non-baseline rows are increments
over the baseline upsampler, so ours are shown the same way. Example::

    uplab-cost                                  # Markdown, all models
    uplab-cost --models segformer_b1 --upsamplers bilinear,fade --format csv --output cost.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf
from rich.progress import Progress
from torch import nn

from uplab.analysis.flops import count_flops, count_params

ROOT = Path(__file__).resolve().parents[3]
PAPER_RESULTS = ROOT / "reference" / "paper_results.yaml"
UPSAMPLER_CONF = ROOT / "conf" / "upsampler"


def load_paper_results(path: str | Path = PAPER_RESULTS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Published numbers as records ``(model, dataset, upsampler, metric, value, relative,
    baseline, source)`` and the notes as ``(model, upsampler, metric, text)``."""
    data = yaml.safe_load(Path(path).read_text())
    records = []
    for table in data["tables"]:
        relative = set(table.get("relative", []))
        absolute_rows = {table["baseline"], *table.get("absolute_rows", [])}
        for upsampler, values in table["rows"].items():
            if len(values) != len(table["columns"]):
                raise ValueError(
                    f"{path}: row {upsampler!r} of {table['model']}/{table['source']} has "
                    f"{len(values)} values for columns {table['columns']}"
                )
            for metric, value in zip(table["columns"], values, strict=True):
                records.append(
                    dict(
                        model=table["model"], dataset=table["dataset"], upsampler=upsampler,
                        metric=metric, value=float(value),
                        relative=metric in relative and upsampler not in absolute_rows,
                        baseline=table["baseline"], source=table["source"],
                    )
                )
    return pd.DataFrame.from_records(records), pd.DataFrame.from_records(data.get("notes", []))


def upsampler_factory(name: str, **options) -> Callable[..., nn.Module]:
    """The factory of ``conf/upsampler/<name>.yaml`` (the papers' defaults), with ``options``
    overriding the file's."""
    path = UPSAMPLER_CONF / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in UPSAMPLER_CONF.glob("*.yaml"))
        raise ValueError(f"no upsampler config {path}; available: {', '.join(available)}")
    return instantiate(OmegaConf.merge(OmegaConf.load(path), options))


def _segformer_b1(upsampler):
    from uplab.models import DenseModel
    from uplab.models.backbones.mit import MixTransformer
    from uplab.models.decoders import SegFormerHead

    return DenseModel(MixTransformer("mit_b1"), partial(SegFormerHead, embed_dim=256), upsampler, 150)


def _a2u_matting(upsampler):
    from uplab.models.decoders.a2u_matting import A2UMatting

    return A2UMatting(upsampler)


def _bts_r50(upsampler):
    from uplab.models import DenseModel
    from uplab.models.backbones import TimmBackbone
    from uplab.models.decoders.bts import BTSDecoder

    return DenseModel(TimmBackbone("resnet50"), partial(BTSDecoder, max_depth=10.0), upsampler, 1)


def _faster_rcnn(upsampler):
    from uplab.models.backbones import TimmBackbone
    from uplab.models.detection import UpsamplingFPN, build_faster_rcnn

    # mmdetection's COCO head: 80 classes + background
    model = build_faster_rcnn(TimmBackbone("resnet50"), UpsamplingFPN, upsampler, num_classes=81)
    # mmdetection's frozen_stages=1: the stem and layer1 do not train, and the mmcv counter
    # counts trainable parameters only
    for name, p in model.backbone.body.named_parameters():
        if name.split(".")[0] in ("conv1", "bn1", "layer1"):
            p.requires_grad_(False)
    return model


@dataclass(frozen=True)
class PaperModel:
    """How one paper model is built and counted.

    Attributes:
        build: ``build(upsampler_factory) -> nn.Module``.
        input_shape: the published input ``(C, H, W)``, or ``None`` where no GFLOPs are published.
        baseline: the upsampler the published increments are relative to.
        upsamplers: the rows of the published tables.
        params_offset: parameters the published count includes that the model does not need
            (negative: parameters it has that the published model has not).
        trainable_only: count only parameters with ``requires_grad`` (the mmcv counter's rule).
        upsampler_options: per upsampler, options overriding ``conf/upsampler/<name>.yaml``
            where the published cost was counted in another setting (see the YAML notes).
        count_layer_norm, count_softmax: the counter's convention (see
            :func:`uplab.analysis.flops.count_flops`).
    """

    build: Callable[[Callable[..., nn.Module]], nn.Module]
    input_shape: tuple[int, int, int] | None
    baseline: str
    upsamplers: Sequence[str]
    params_offset: int = 0
    trainable_only: bool = False
    upsampler_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    count_layer_norm: bool = True
    count_softmax: bool = True


# The published IndexNet costs of SegFormer, BTS and Faster R-CNN are those of the holistic index
# block with the nonlinear and context options on (the IndexUp default of the papers' code base),
# whatever block the trained model used (the FADE log's SegFormer has linear M2O blocks).
_INDEXNET_AS_COUNTED = {"index_block": "holistic", "nonlinear": True, "context": True}

PAPER_MODELS: dict[str, PaperModel] = {
    "segformer_b1": PaperModel(
        _segformer_b1, (3, 512, 512), "bilinear",
        ("bilinear", "carafe", "indexnet", "a2u", "sapa_i", "sapa_b", "sapa_g", "fade", "fade_lite", "dysample"),
        params_offset=128 * 150 + 150,  # mmseg's unused conv_seg (see the YAML notes)
        upsampler_options={"indexnet": _INDEXNET_AS_COUNTED},
        count_layer_norm=False,
        count_softmax=False,
    ),
    "a2u_matting_r34": PaperModel(
        _a2u_matting, (4, 512, 512), "bilinear",
        ("bilinear", "nearest", "carafe", "indexnet", "a2u", "sapa_i", "sapa_b", "sapa_g", "fade", "fade_lite"),
        # IndexNet's matting model, "M2O DIN" (depth-wise many-to-one, nonlinear, context)
        upsampler_options={"indexnet": {"index_block": "m2o", "nonlinear": True, "context": True}},
    ),
    "bts_r50": PaperModel(
        _bts_r50, None, "nearest",
        ("nearest", "carafe", "indexnet", "a2u", "sapa_b", "sapa_g"),
        params_offset=2048 * 1000 + 1000,  # the release keeps torchvision's unused ImageNet fc
        upsampler_options={"indexnet": _INDEXNET_AS_COUNTED},
    ),
    "faster_rcnn_r50_fpn": PaperModel(
        _faster_rcnn, None, "nearest",
        ("nearest", "carafe", "indexnet", "a2u", "sapa_i", "sapa_b", "sapa_g"),
        params_offset=-4 * 1025,  # mmdetection regresses 80 classes, torchvision 81 (background too)
        trainable_only=True,
        upsampler_options={"indexnet": _INDEXNET_AS_COUNTED},
    ),
}


def measure(model_name: str, upsampler: str) -> dict[str, float]:
    """Params (M) and GFLOPs of one paper model with one upsampler (GFLOPs NaN when the papers
    publish none for the model)."""
    spec = PAPER_MODELS[model_name]
    torch.manual_seed(0)
    options = spec.upsampler_options.get(upsampler, {})
    model = spec.build(upsampler_factory(upsampler, **options)).eval()
    params = (count_params(model, trainable_only=spec.trainable_only) + spec.params_offset) / 1e6
    gflops = float("nan")
    if spec.input_shape is not None:
        x = torch.zeros(1, *spec.input_shape)
        gflops = count_flops(
            model, x, count_layer_norm=spec.count_layer_norm, count_softmax=spec.count_softmax
        )["total"] / 1e9
    return {"params": params, "gflops": gflops}


def cost_table(
    models: Sequence[str] | None = None,
    upsamplers: Sequence[str] | None = None,
    paper_results: str | Path = PAPER_RESULTS,
    progress: bool = True,
) -> pd.DataFrame:
    """Ours beside the published numbers, one row per (model, upsampler, metric, source).

    Columns: ``model, upsampler, metric, ours, published, source, diff, rel_diff, note``, where
    ``ours`` is an increment over our baseline row where the published cell is one ("+0.44"), and
    absolute otherwise.
    """
    models = list(models or PAPER_MODELS)
    unknown = [m for m in models if m not in PAPER_MODELS]
    if unknown:
        raise ValueError(f"unknown paper models {unknown}; choose from {sorted(PAPER_MODELS)}")
    published, notes = load_paper_results(paper_results)
    jobs = []
    for m in models:
        spec = PAPER_MODELS[m]
        ups = [u for u in spec.upsamplers if upsamplers is None or u in upsamplers]
        if ups and spec.baseline not in ups:
            ups.insert(0, spec.baseline)
        jobs += [(m, u) for u in ups]
    measured = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("building and counting", total=len(jobs))
        for m, u in jobs:
            bar.update(task, description=f"{m} + {u}")
            measured[m, u] = measure(m, u)
            bar.advance(task)
    rows = []
    for (m, u), ours in measured.items():
        spec = PAPER_MODELS[m]
        for metric in ("params", "gflops"):
            pub = published[
                (published.model == m) & (published.upsampler == u) & (published.metric == metric)
            ]
            cells = [p for _, p in pub.iterrows()] or [None]
            if pub.empty and pd.isna(ours[metric]):
                continue
            for p in cells:
                relative = u != spec.baseline if p is None else bool(p.relative)
                base = measured[m, spec.baseline][metric]
                rows.append(
                    dict(
                        model=m, upsampler=u, metric=metric,
                        ours=ours[metric] - base if relative else ours[metric],
                        published=None if p is None else p.value,
                        source=None if p is None else p.source,
                    )
                )
    table = pd.DataFrame.from_records(rows)
    table["diff"] = table.ours - table.published
    table["rel_diff"] = table["diff"] / table.published.abs().where(table.published != 0)
    if len(notes):
        keyed = {(n.model, n.upsampler, n.metric): n.text for n in notes.itertuples()}
        table["note"] = [keyed.get(k, "") for k in zip(table.model, table.upsampler, table.metric, strict=True)]
    else:
        table["note"] = ""
    return table


def render(table: pd.DataFrame, fmt: str = "markdown") -> str:
    """The table as Markdown, CSV or LaTeX."""
    shown = table.copy()
    if fmt == "csv":
        return shown.to_csv(index=False)
    shown["ours"] = shown.ours.map(lambda v: f"{v:.2f}" if pd.notna(v) else "")
    shown["published"] = shown.published.map(lambda v: f"{v:g}" if pd.notna(v) else "")
    shown["diff"] = shown["diff"].map(lambda v: f"{v:+.2f}" if pd.notna(v) else "")
    shown["rel_diff"] = shown.rel_diff.map(lambda v: f"{v:+.1%}" if pd.notna(v) else "")
    shown = shown.fillna("")
    if fmt == "markdown":
        return shown.to_markdown(index=False) if _has_tabulate() else _markdown(shown)
    if fmt == "latex":
        return shown.to_latex(index=False, escape=True)
    raise ValueError(f"format must be markdown, csv or latex, got {fmt!r}")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _markdown(df: pd.DataFrame) -> str:
    # pandas' to_markdown needs tabulate; a plain pipe table needs nothing
    header = "| " + " | ".join(df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uplab-cost", description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated, from {','.join(PAPER_MODELS)}")
    parser.add_argument("--upsamplers", help="comma-separated upsampler names (default: the papers' rows)")
    parser.add_argument("--format", choices=("markdown", "csv", "latex"), default="markdown")
    parser.add_argument("--output", type=Path, help="write here instead of standard output")
    parser.add_argument("--paper-results", type=Path, default=PAPER_RESULTS)
    args = parser.parse_args(argv)
    split = lambda s: [v for v in s.split(",") if v] if s else None  # noqa: E731
    try:
        table = cost_table(split(args.models), split(args.upsamplers), args.paper_results)
    except ValueError as err:
        parser.error(str(err))
    text = render(table, args.format)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
