"""``uplab-cost``: parameters and GFLOPs of the paper rows' models, beside the published numbers
(``reference/paper_results.yaml``).

Each row's model is built from the row's own experiment config (``conf/experiment/paper/``) by the
code that ``uplab-train experiment=paper/<row>`` trains it with (``uplab.tasks.build.build_task``), and
counted at the published input size in the published counter's convention, declared per setting
in :data:`PAPER_MODELS` (:mod:`uplab.analysis.flops`). Published cost cells of non-baseline rows
are increments over the baseline upsampler, so ours are shown the same way. Example::

    uplab-cost                                  # Markdown, all models
    uplab-cost --models segformer_b1 --upsamplers bilinear,fade --format csv --output cost.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from rich.progress import Progress
from torch import nn

from uplab.analysis.flops import count_flops, count_params

ROOT = Path(__file__).resolve().parents[3]
PAPER_RESULTS = ROOT / "reference" / "paper_results.yaml"
UPSAMPLER_CONF = ROOT / "conf" / "upsampler"
PAPER_CONF = ROOT / "conf" / "experiment" / "paper"


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


@dataclass(frozen=True)
class CostSetting:
    """One paper setting as the cost table counts it: the rows' models come from the rows'
    experiment configs (``conf/experiment/paper/<upsampler>_<model>_<dataset>.yaml``); what is
    declared here is only how the published counter counted them.

    Attributes:
        dataset: the dataset part of the rows' config names.
        input_shape: the published input ``(C, H, W)``, or ``None`` where no GFLOPs are published.
        baseline: the upsampler the published increments are relative to.
        upsamplers: the rows of the published tables (one without a row config is the setting's
            base config with ``upsampler=<name>``).
        data: the attributes the training run takes from the dataset (``num_classes``,
            ``ignore_index``), given here so that counting needs no dataset on disk.
        no_weights: overrides that skip loading initial weights (they do not change a count).
        params_offset: parameters the published count includes that the model does not have
            (negative: parameters the model has that the published count has not).
        trainable_only: count only parameters with ``requires_grad`` (the mmcv counter's rule).
        count_layer_norm, count_softmax: the counter's convention (see
            :func:`uplab.analysis.flops.count_flops`).
    """

    dataset: str
    input_shape: tuple[int, int, int] | None
    baseline: str
    upsamplers: Sequence[str]
    data: Mapping[str, Any] = field(default_factory=dict)
    no_weights: Sequence[str] = ()
    params_offset: int = 0
    trainable_only: bool = False
    count_layer_norm: bool = True
    count_softmax: bool = True


PAPER_MODELS: dict[str, CostSetting] = {
    "segformer_b1": CostSetting(
        "ade20k", (3, 512, 512), "bilinear",
        ("bilinear", "carafe", "indexnet", "a2u", "sapa_i", "sapa_b", "sapa_g", "fade", "fade_lite", "dysample"),
        data={"num_classes": 150, "ignore_index": 255},
        no_weights=("backbone.checkpoint=null",),
        params_offset=128 * 150 + 150,  # mmseg's unused conv_seg (see the YAML notes)
        # SegFormer's get_flops: mmcv hooks without LayerNorm, attention by its sra_flops
        count_layer_norm=False,
        count_softmax=False,
    ),
    "a2u_matting_r34": CostSetting(
        "comp1k", (4, 512, 512), "bilinear",
        ("bilinear", "nearest", "carafe", "indexnet", "a2u", "sapa_i", "sapa_b", "sapa_g", "fade", "fade_lite"),
        no_weights=("paper.backbone.checkpoint=null",),
    ),
    "bts_r50": CostSetting(
        "nyuv2", None, "nearest",
        ("nearest", "carafe", "indexnet", "a2u", "sapa_b", "sapa_g"),
        no_weights=("backbone.checkpoint=null",),
        params_offset=2048 * 1000 + 1000,  # the release keeps torchvision's unused ImageNet fc
    ),
    "faster_rcnn_r50_fpn": CostSetting(
        "coco", None, "nearest",
        ("nearest", "carafe", "indexnet", "a2u", "sapa_i", "sapa_b", "sapa_g"),
        data={"num_classes": 81},  # 80 COCO classes and the background
        no_weights=("backbone.checkpoint=null",),
        # torchvision's box regressor has outputs for the background class too (81 x 4, unused
        # by its loss), mmdetection's 80 x 4
        params_offset=-4 * 1025,
        trainable_only=True,  # mmcv's counter; frozen_stages=1 holds the stem and layer1
    ),
}


def row_overrides(model_name: str, upsampler: str) -> list[str]:
    """The ``uplab-train`` overrides of a row: ``experiment=paper/<upsampler>_<model>_<dataset>``,
    or, for an upsampler without a row config, the setting's base with ``upsampler=<name>``."""
    stem = f"{model_name}_{PAPER_MODELS[model_name].dataset}"
    if (PAPER_CONF / f"{upsampler}_{stem}.yaml").is_file():
        return [f"experiment=paper/{upsampler}_{stem}"]
    if not (UPSAMPLER_CONF / f"{upsampler}.yaml").is_file():
        available = sorted(p.stem for p in UPSAMPLER_CONF.glob("*.yaml"))
        raise ValueError(
            f"no row config paper/{upsampler}_{stem} and no upsampler config {upsampler!r}; "
            f"upsamplers: {', '.join(available)}"
        )
    return [f"experiment=paper/_{stem}", f"upsampler={upsampler}"]


def compose_row(model_name: str, upsampler: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed ``uplab-train`` config of a row, as ``uplab-train experiment=paper/<row>``
    composes it, plus ``overrides``."""
    from uplab.train import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*row_overrides(model_name, upsampler), *overrides])


@contextmanager
def parameters_on_meta():
    """Modules built inside register their parameters on the meta device: no memory and no
    initialisation, the shapes (and ``requires_grad``) kept, so a model is counted without
    being built (the idea of accelerate's ``init_empty_weights``). Buffers and other tensors
    stay on the default device, so the rest of a training module (its metrics) builds as usual."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_model(cfg: DictConfig, data: Mapping[str, Any], empty: bool = False) -> nn.Module:
    """The model a run of ``cfg`` trains: the task module built by ``uplab.tasks.build.build_task`` (the
    code path of ``uplab-train``), with ``data`` standing in for the dataset's attributes.

    Args:
        cfg: a composed ``uplab-train`` config.
        data: ``num_classes`` / ``ignore_index`` as the dataset would give them.
        empty: parameters on the meta device (:func:`parameters_on_meta`): parameter counts
            only, no forward.
    """
    from uplab.tasks.build import build_task

    with parameters_on_meta() if empty else nullcontext():
        return build_task(cfg, SimpleNamespace(**data)).model


def row_model(
    model_name: str, upsampler: str, empty: bool = False, overrides: Sequence[str] = ()
) -> nn.Module:
    """The model of one row, built from the row's config plus ``overrides`` (initial weights not
    loaded)."""
    spec = PAPER_MODELS[model_name]
    cfg = compose_row(model_name, upsampler, [*spec.no_weights, *overrides])
    return build_model(cfg, spec.data, empty=empty)


def row_params(model_name: str, upsampler: str) -> int:
    """Parameters of a row's model in its paper's counting convention (built on the meta device)."""
    spec = PAPER_MODELS[model_name]
    model = row_model(model_name, upsampler, empty=True)
    return count_params(model, trainable_only=spec.trainable_only) + spec.params_offset


def measure(model_name: str, upsampler: str) -> dict[str, float]:
    """Params (M) and GFLOPs of one row's model (GFLOPs NaN when the papers publish none for the
    model, and then the model is only built on the meta device)."""
    spec = PAPER_MODELS[model_name]
    gflops = float("nan")
    if spec.input_shape is not None:
        torch.manual_seed(0)
        model = row_model(model_name, upsampler).eval()
        gflops = count_flops(
            model, torch.zeros(1, *spec.input_shape),
            count_layer_norm=spec.count_layer_norm, count_softmax=spec.count_softmax,
        )["total"] / 1e9
    return {"params": row_params(model_name, upsampler) / 1e6, "gflops": gflops}


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
