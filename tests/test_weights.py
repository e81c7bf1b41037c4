"""Released initial weights (uplab.weights, scripts/fetch_weights.py, the preflight checks): the
manifest, the cache, verified downloads and strict loading, on checkpoints built here with the
real key layout and random values. Nothing is downloaded: fetches read file:// URLs or a
stand-in downloader."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import urllib.error
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torchvision.models import resnet50

from uplab import weights
from uplab.models.backbones import TimmBackbone
from uplab.models.backbones.mit import MixTransformer
from uplab.preflight import UsageError, check_initial_weights, check_weights
from uplab.train import config_dir

ROOT = Path(__file__).parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(weights.ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def released(tmp_path, monkeypatch) -> weights.WeightsEntry:
    """A manifest entry whose URL is a local file with a known SHA-256, as the only entry: timm's
    tiny ``test_resnet`` with random values, loaded into TimmBackbone."""
    published = tmp_path / "published" / "tiny-0123.pth"
    published.parent.mkdir()
    torch.save(timm.create_model("test_resnet").state_dict(), published)
    item = weights.WeightsEntry(
        name="tiny",
        file="tiny-0123.pth",
        url=published.as_uri(),
        direct=True,
        sha256=hashlib.sha256(published.read_bytes()).hexdigest(),
        sha256_prefix=None,
        key_mapping="uplab.models.backbones.timm_backbone.TimmBackbone.load_checkpoint",
        loads_into={"_target_": "uplab.models.backbones.TimmBackbone", "name": "test_resnet"},
        source="here",
        settings=(),
    )
    monkeypatch.setattr(weights, "manifest", lambda: {"tiny": item})
    return item


def compose_row(row: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[f"experiment=paper/{row}", *overrides])


# -- the manifest -------------------------------------------------------------------------------


def test_manifest_entries_name_real_mappings_and_consistent_hashes():
    entries = weights.manifest()
    assert {"mit_b1", "a2u_resnet34", "torchvision_resnet50"} <= set(entries)
    for item in entries.values():
        owner_path, _, attr = item.key_mapping.rpartition(".")
        owner = _import_dotted(owner_path)
        assert callable(getattr(owner, attr)), item.key_mapping
        assert item.url.startswith("https://"), item.name
        if item.sha256:
            assert len(item.sha256) == 64 and int(item.sha256, 16) >= 0, item.name
        if item.sha256_prefix:
            assert item.sha256_prefix in item.file and (item.sha256 or "").startswith(
                item.sha256_prefix
            )
        assert callable(_import_dotted(item.loads_into["_target_"])), item.name


def _import_dotted(dotted: str):
    """A module, or a class inside one (``pkg.module.Class``)."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, attr = dotted.rpartition(".")
        return getattr(importlib.import_module(module), attr)


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(weights.ENV, str(tmp_path))
    assert weights.path("torchvision_resnet50") == tmp_path / "resnet50-0676ba61.pth"
    monkeypatch.delenv(weights.ENV)
    assert weights.cache_dir() == Path.home() / ".cache" / "uplab" / "weights"
    with pytest.raises(weights.WeightsError, match="no initial weights named 'resnet51'.*mit_b1"):
        weights.entry("resnet51")


def test_resolve_names_the_file_the_url_and_the_command(cache):
    with pytest.raises(weights.WeightsError) as missing:
        weights.resolve("torchvision_resnet50")
    message = str(missing.value)
    assert "\n" not in message
    for words in (
        "resnet50-0676ba61.pth",
        str(cache),
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "python scripts/fetch_weights.py torchvision_resnet50",
    ):
        assert words in message
    with pytest.raises(weights.WeightsError, match=r"by hand.*fetch_weights\.py mit_b1 --from"):
        weights.resolve("mit_b1")  # a Drive folder: downloaded by hand, added with --from
    (cache / "resnet50-0676ba61.pth").parent.mkdir(parents=True)
    (cache / "resnet50-0676ba61.pth").write_bytes(b"")
    assert weights.resolve("torchvision_resnet50") == cache / "resnet50-0676ba61.pth"


# -- fetching -----------------------------------------------------------------------------------


def test_fetch_checks_the_hash_and_moves_the_file_in_whole(cache, released, monkeypatch):
    target = weights.fetch("tiny", progress=False)
    assert target == cache / "tiny-0123.pth"
    assert target.read_bytes() == Path(released.url.removeprefix("file://")).read_bytes()
    target.unlink()
    monkeypatch.setattr(weights, "manifest", lambda: {"tiny": replace(released, sha256="ab" * 32)})
    with pytest.raises(
        weights.WeightsError, match=r"tiny-0123\.pth: SHA-256 [0-9a-f]{64} where.*abab"
    ):
        weights.fetch("tiny", progress=False)
    assert list(cache.iterdir()) == []  # neither the file nor a partial download stays


def test_fetch_offline_and_by_hand(cache, released, monkeypatch, tmp_path):
    def offline(url, dst, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(
        weights.WeightsError,
        match=r"cannot download file://.*name resolution.*fetch_weights\.py tiny --from",
    ):
        weights.fetch("tiny", progress=False)
    assert list(cache.iterdir()) == []
    by_hand = tmp_path / "published" / "tiny-0123.pth"
    assert weights.fetch("tiny", by_hand).read_bytes() == by_hand.read_bytes()
    folder = replace(released, direct=False, url="https://drive.google.com/drive/folders/x")
    monkeypatch.setattr(weights, "manifest", lambda: {"tiny": folder})
    (cache / "tiny-0123.pth").unlink()
    with pytest.raises(
        weights.WeightsError, match=r"is a folder, not a file a script can download"
    ):
        weights.fetch("tiny")


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "fetch_weights", ROOT / "scripts" / "fetch_weights.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_fetch_weights_script_reports_each_entry_on_one_line(cache, released, capsys):
    script = _load_script()
    assert script.main(["--all", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"tiny: {cache / 'tiny-0123.pth'} (SHA-256 checked)")
    (cache / "tiny-0123.pth").write_bytes(b"not the release")
    assert script.main(["tiny"]) == 1  # in the cache, but not the published file
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fetch_weights: tiny: tiny-0123.pth: SHA-256")


def test_fetch_weights_script_loads_a_file_without_a_published_hash_before_it_moves_in(
    cache, released, monkeypatch, tmp_path, capsys
):
    script = _load_script()
    monkeypatch.setattr(weights, "manifest", lambda: {"tiny": replace(released, sha256=None)})
    foreign = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), foreign)
    assert script.main(["tiny", "--from", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "tiny-0123.pth does not load into uplab.models.backbones.TimmBackbone: " in err
    assert "does not fit FeatureListNet: " in err and "Error in call" not in err
    assert list(cache.iterdir()) == []
    assert (
        script.main(["tiny", "--from", released.url.removeprefix("file://"), "--no-progress"]) == 0
    )
    assert "not published: nothing to check it against" in capsys.readouterr().out


# -- strict loading -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_resnet50_file(tmp_path_factory) -> Path:
    """torchvision's ResNet-50 state dict as its released file holds it: random values, every
    key of the architecture (the classifier included), no BatchNorm step counters."""
    torch.manual_seed(0)
    state = {
        k: v for k, v in resnet50().state_dict().items() if not k.endswith("num_batches_tracked")
    }
    for value in state.values():
        value.copy_(torch.randn_like(value))
    path = tmp_path_factory.mktemp("released") / "resnet50-0676ba61.pth"
    torch.save(state, path)
    return path


def test_torchvision_resnet50_loads_into_timms_resnet50_strictly(torchvision_resnet50_file):
    released = torch.load(torchvision_resnet50_file)
    backbone = TimmBackbone("resnet50", include_input=True, checkpoint=torchvision_resnet50_file)
    ours = backbone.model.state_dict()
    assert set(released) - set(ours) == {"fc.weight", "fc.bias"}  # the ImageNet classifier
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer3.5.bn3.bias",
        "layer4.0.downsample.0.weight",
    ):
        assert torch.equal(ours[key], released[key]), key


def test_a_missing_or_extra_key_is_named(torchvision_resnet50_file):
    released = torch.load(torchvision_resnet50_file)
    backbone = TimmBackbone("resnet50")
    missing = {k: v for k, v in released.items() if k != "layer2.1.conv2.weight"}
    with pytest.raises(
        weights.WeightsError,
        match=r"1 module tensors the checkpoint lacks: layer2\.1\.conv2\.weight",
    ):
        backbone.load_checkpoint(missing)
    extra = {**released, "layer1.0.se.fc.weight": torch.zeros(1)}
    with pytest.raises(
        weights.WeightsError,
        match=r"1 checkpoint tensors the module has no place for: layer1\.0\.se\.fc\.weight",
    ):
        backbone.load_checkpoint(extra)
    with pytest.raises(ValueError, match="pretrained=True and checkpoint"):
        TimmBackbone("resnet50", pretrained=True, checkpoint=torchvision_resnet50_file)


def test_mit_checkpoint_missing_a_tensor_is_named():
    released = {
        key: torch.randn_like(value) for key, value in MixTransformer("mit_b0").state_dict().items()
    }
    released.pop("stages.3.norm.bias")
    with pytest.raises(weights.WeightsError, match=r"lacks: stages\.3\.norm\.bias"):
        weights.load_strict(MixTransformer("mit_b0"), released, "mit_b0.pth")


# -- preflight ----------------------------------------------------------------------------------


def test_preflight_names_the_missing_released_file_in_one_line(cache):
    cfg = compose_row("nearest_bts_r50_nyuv2")
    with pytest.raises(UsageError) as missing:
        check_weights(cfg)
    message = str(missing.value)
    assert "\n" not in message and message.startswith("backbone.checkpoint: initial weights")
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "python scripts/fetch_weights.py torchvision_resnet50" in message
    matting = compose_row("fade_a2u_matting_r34_comp1k")
    with pytest.raises(
        UsageError, match=r"a2u_resnet34\.pth\.tar.*cloudstor.*fetch_weights\.py a2u_resnet34"
    ):
        check_weights(matting)


def test_a_paper_row_with_a_random_encoder_stops_unless_asked(cache):
    with pytest.raises(UsageError, match=r"random weights.*scratch_encoder=true"):
        check_initial_weights(compose_row("sapa_g_segformer_b1_ade20k", "backbone.checkpoint=null"))
    with pytest.raises(UsageError, match="random weights"):
        check_initial_weights(
            compose_row("sapa_g_a2u_matting_r34_comp1k", "paper.backbone.checkpoint=null")
        )
    check_initial_weights(compose_row("sapa_g_segformer_b1_ade20k"))
    check_initial_weights(
        compose_row(
            "sapa_g_segformer_b1_ade20k", "backbone.checkpoint=null", "scratch_encoder=true"
        )
    )
    check_initial_weights(
        compose_row("sapa_g_segformer_b1_ade20k", "tags=[toy]", "backbone.checkpoint=null")
    )
