"""The project root: outputs and data go there from any working directory (conf/paths)."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from uplab.paths import project_root

ROOT = Path(__file__).parents[1]


def _paths(**overrides):
    GlobalHydra.instance().clear()  # another test's compose may have left it initialized
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"{k}={v}" for k, v in overrides.items()]).paths


def test_outputs_and_data_go_under_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("UPLAB_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() == ROOT.resolve()
    paths = _paths()
    assert Path(paths.log_dir) == ROOT.resolve() / "outputs"
    assert Path(paths.data_dir) == ROOT.resolve() / "data"


def test_uplab_root_moves_them(tmp_path, monkeypatch):
    monkeypatch.setenv("UPLAB_ROOT", str(tmp_path))
    assert Path(_paths().log_dir) == tmp_path.resolve() / "outputs"
