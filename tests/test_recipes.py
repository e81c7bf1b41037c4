"""Every paper row composes to its released recipe (reference/recipes/<setting>.yaml), every
recipe covers every aspect with its source, and docs/datasets.md lists the deviations that remain."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from uplab import recipes
from uplab.train import config_dir

RECIPES = recipes.load_recipes()


def composed_row(row: str, overrides: tuple[str, ...] = ()) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"experiment=paper/{row}", *overrides], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)  # the ${hydra:...} fields resolve as in a run
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in cfg
        if k != "hydra"
    }


def test_every_paper_setting_has_a_recipe():
    settings = {p.stem[1:] for p in recipes.paper_dir().glob("_*.yaml")}
    assert {r.setting for r in RECIPES} == settings
    for recipe in RECIPES:
        assert recipe.path.stem == recipe.setting
        assert recipe.rows(), f"{recipe.setting}: no paper rows"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.setting)
def test_every_row_composes_to_its_recipe(recipe):
    problems = {}
    for upsampler in recipe.rows():
        row = f"{upsampler}_{recipe.setting}"
        found = recipes.row_mismatches(recipe, upsampler, composed_row(row))
        if found:
            problems[row] = found
    assert not problems, yaml.safe_dump(problems, width=200)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.setting)
def test_the_tests_a_recipe_names_exist(recipe):
    assert not recipes.missing_tests(recipe)
    for source in recipe.sources.values():
        assert source.get("repo") and source.get("path"), source


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.setting)
def test_a_recipe_entry_rows_name_real_rows(recipe):
    rows = set(recipe.rows())
    for entry in recipe.entries:
        assert entry.rows is None or set(entry.rows) <= rows, (entry.aspect, entry.rows)


def test_docs_list_the_deviations_that_remain():
    documented = recipes.documented_deviations(recipes.docs_path().read_text())
    assert documented == recipes.deviations_markdown(RECIPES), (
        "docs/datasets.md is behind reference/recipes/: run python -m uplab.recipes --write-docs"
    )


# The checker itself, on a recipe written here.

MINIMAL_ENTRY = {
    "released": "x",
    "source": "config",
    "tests": ["tests/test_recipes.py::test_checker_flags_a_changed_value"],
}


def write_recipe(tmp_path: Path, aspects: dict) -> Path:
    body = {
        "setting": "segformer_b1_ade20k",
        "title": "t",
        "sources": {"config": {"repo": "NVlabs/SegFormer", "path": "local_configs/x.py"}},
        "aspects": {a: dict(MINIMAL_ENTRY) for a in recipes.ASPECTS} | aspects,
    }
    path = tmp_path / "segformer_b1_ade20k.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_checker_flags_a_changed_value(tmp_path):
    lr = {"released": "lr=0.00006", "source": "config", "config": {"task.optimizer.lr": 6.0e-5}}
    recipe = recipes.load_recipe(write_recipe(tmp_path, {"optimizer": lr}))
    assert recipes.row_mismatches(recipe, "fade", composed_row("fade_segformer_b1_ade20k")) == []
    changed = composed_row("fade_segformer_b1_ade20k", ("paper.optimizer.lr=6e-4",))
    assert recipes.row_mismatches(recipe, "fade", changed) == [
        "optimizer: task.optimizer.lr = 0.0006, recipe says 6e-05"
    ]
    absent = {"released": "x", "source": "config", "config": {"task.no_such_field": 1}}
    recipe = recipes.load_recipe(write_recipe(tmp_path, {"loss": absent}))
    assert recipes.row_mismatches(recipe, "fade", composed_row("fade_segformer_b1_ade20k")) == [
        "loss: task.no_such_field is absent, recipe says 1"
    ]


@pytest.mark.parametrize(
    ("aspects", "message"),
    [
        (
            {"pad": {"released": "x", "source": "elsewhere", "tests": ["a.py::b"]}},
            "source 'elsewhere'",
        ),
        ({"pad": {"released": "x", "source": "config"}}, "give 'config' keys or 'tests'"),
        (
            {"pad": {"source": "config", "tests": ["a.py::b"]}},
            "'released' and 'source' are required",
        ),
        ({"padding": dict(MINIMAL_ENTRY)}, "unknown ['padding']"),
    ],
)
def test_a_malformed_recipe_is_refused_with_the_reason(tmp_path, aspects, message):
    with pytest.raises(recipes.RecipeError, match=message.replace("[", r"\[").replace("(", r"\(")):
        recipes.load_recipe(write_recipe(tmp_path, aspects))


def test_a_missing_aspect_is_refused(tmp_path):
    path = write_recipe(tmp_path, {})
    body = yaml.safe_load(path.read_text())
    del body["aspects"]["eval_crop"]
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(recipes.RecipeError, match=r"missing \['eval_crop'\]"):
        recipes.load_recipe(path)


def test_missing_tests_names_an_absent_test(tmp_path):
    gone = {
        "released": "x",
        "source": "config",
        "tests": ["tests/test_recipes.py::test_that_does_not_exist"],
    }
    recipe = recipes.load_recipe(write_recipe(tmp_path, {"loss": gone}))
    assert recipes.missing_tests(recipe) == [
        "loss: tests/test_recipes.py::test_that_does_not_exist (no test test_that_does_not_exist in tests/test_recipes.py)"
    ]


def test_values_compare_floats_by_value_and_lists_elementwise():
    assert recipes.values_equal(0.00006, 6.0e-5)
    assert not recipes.values_equal(6.1e-5, 6.0e-5)
    assert recipes.values_equal([0.9, 0.999], [0.9, 0.999])
    assert not recipes.values_equal([0.9], [0.9, 0.999])
    assert not recipes.values_equal(True, 1.0)
    assert not recipes.values_equal("0.01", 0.01)


def test_deviations_render_as_a_table_per_setting(tmp_path):
    pad = {
        "released": "pad 0 after Normalize",
        "source": "config",
        "deviation": "pads | 0 before",
        "tests": MINIMAL_ENTRY["tests"],
    }
    recipe = recipes.load_recipe(write_recipe(tmp_path, {"pad": pad}))
    text = recipes.deviations_markdown([recipe])
    assert "| pad | pad 0 after Normalize | pads \\| 0 before |" in text.splitlines()
