"""``conf/dataset/<name>.yaml`` agrees with the registered loader: name, root, aux, domain, options."""

from __future__ import annotations

from importlib import resources

import pytest
from omegaconf import OmegaConf

from zsad_bench.commands.data import build_family
from zsad_bench.registry import DATASETS

NAMES = [n for n in DATASETS.list() if not n.startswith("synth")]


def _yaml(name):
    return OmegaConf.load(str(resources.files("zsad_bench.conf") / "dataset" / f"{name}.yaml"))


@pytest.mark.parametrize("name", NAMES)
def test_yaml_matches_the_loader(name):
    cfg = _yaml(name)
    info = DATASETS.get(name).info()
    assert cfg.name == name
    assert cfg.categories == "all"
    assert OmegaConf.to_container(cfg)["root"].endswith(f"/{info.subdir or name}")
    assert cfg.aux == info.default_aux
    assert cfg.aux in DATASETS
    assert cfg.domain == info.domain
    family = build_family(name, OmegaConf.to_container(cfg.options))
    assert family.info().name == name


def test_papers_auxiliary_pairs():
    aux = {n: _yaml(n).aux for n in NAMES}
    assert (aux["mvtec_ad"], aux["visa"]) == ("visa", "mvtec_ad")
    assert (aux["clinicdb"], aux["colondb"]) == ("colondb", "clinicdb")
    for name, a in aux.items():
        if name not in ("mvtec_ad", "visa", "clinicdb", "colondb"):
            assert a == "mvtec_ad", name


def test_every_dataset_composes_with_the_run_config():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
        for name in NAMES:
            cfg = compose(config_name="config", overrides=[f"dataset={name}", "paths.data_root=/data"])
            assert cfg.dataset.root == f"/data/{name}"
            assert "options" in cfg.dataset
