"""common.config and common.cli: what every stage's YAML + key=value handling promises a user."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common import cli
from common import config as C
from common.errors import UserError
from pretrain.config import PretrainConfig
from tests.conftest import ROOT


def test_yaml_style_numbers_are_floats_in_overrides_and_files(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-3\n  weight_decay: 2E-2\n")
    cfg = C.load(PretrainConfig, str(tmp_path / "c.yaml"), ["max_steps=10", "optim.eps=1e-8", "optim.lr=5e-4"])
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 0.02 and cfg.optim.eps == 1e-8
    assert C.load(PretrainConfig, None, ["optim.lr=1e9"]).optim.lr == 1e9
    # plain YAML floats and ints keep their meaning; a version-like string stays a string
    assert C.yaml_load("1.5", "x") == 1.5 and C.yaml_load("7", "x") == 7 and C.yaml_load("1.2.3", "x") == "1.2.3"


def test_misplaced_key_names_its_section():
    with pytest.raises(C.ConfigError) as e:
        C.load(PretrainConfig, None, ["lr=1e-3"])
    assert "'lr' is optim.lr" in str(e.value)
    with pytest.raises(C.ConfigError) as e:
        C.load(PretrainConfig, None, ["data.max_steps=5"])
    assert "data: unknown keys ['max_steps']" in str(e.value) and "'max_steps' is max_steps" in str(e.value)


def test_malformed_yaml_is_one_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1e-3\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(PretrainConfig, str(bad))
    assert str(bad) in str(e.value) and "not valid YAML (line" in str(e.value)
    with pytest.raises(C.ConfigError, match="not found"):
        C.load(PretrainConfig, str(tmp_path / "absent.yaml"))
    assert issubclass(C.ConfigError, UserError)


def test_help_lists_fields_with_defaults_and_comments():
    text = C.parser(PretrainConfig, "d").format_help()
    assert "max_steps=" in text and "optim.lr=" in text
    comment = C._field_comments(PretrainConfig)
    assert comment, "PretrainConfig's fields carry trailing comments"
    name, line = next(iter(comment.items()))
    assert any(row.strip().startswith(f"{name}=") and line in row for row in text.splitlines())


def test_cli_run_one_line_exit_2_and_debug(capsys, monkeypatch):
    monkeypatch.delenv("STG_DEBUG", raising=False)

    def main(argv):
        raise C.ConfigError("config file [x.yaml]: top level must be\na mapping")

    assert cli.run(main, ["a"]) == 2
    err = capsys.readouterr().err
    assert err == "error: config file [x.yaml]: top level must be a mapping\n"
    with pytest.raises(C.ConfigError):
        cli.run(main, ["--debug"])

    def bug(argv):
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        cli.run(bug, ["a"])


def test_entry_point_malformed_yaml_is_one_line(tmp_path):
    """As a user runs it: a fresh process, a broken YAML config."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_train: [3\n")
    r = subprocess.run([sys.executable, "-m", "shards.synthetic", "--config", str(bad), "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config file [") and str(bad) in lines[0], r.stderr


def test_blank_override_is_a_blank_string_and_null_is_refused_for_strings():
    cfg = C.load(PretrainConfig, None, ["run= "])
    assert cfg.run == " "
    with pytest.raises(C.ConfigError, match="expected a string, got null"):
        C.load(PretrainConfig, None, ["run=null"])


ENTRY_POINTS = {  # module: a field its --help must list (None: the command takes no config)
    "cluster.demo": "n_train=", "cluster.pretrain": "optim.lr=", "cluster.finetune": "max_steps=",
    "cluster.index": "mine.k=", "cluster.shard": "fps=", "grounding.predict": "inference.tau=",
    "grounding.evaluate": "charades_nms=", "shards.synthetic.__main__": "n_train=", "finetune.train": "max_steps=",
    "tubes.__main__": None, "grounding.query": None, "pretrain.export": None,
}


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_help_exits_0_and_lists_its_fields(module, capsys):
    import importlib

    mod = importlib.import_module(module)
    try:
        code = mod.main(["--help"])
    except SystemExit as e:  # argparse's own --help
        code = e.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("usage:")
    if ENTRY_POINTS[module]:
        assert any(line.strip().startswith(ENTRY_POINTS[module]) for line in out.splitlines()), out[-2000:]


@pytest.mark.parametrize("config, size", [(None, 64), ("demo64.yaml", 64), ("demo32.yaml", 32)])
def test_demo_configs_parse_and_their_shards_fit_their_model(config, size):
    """make demo's defaults, configs/demo64.yaml and configs/demo32.yaml (docs/pretraining.md) load as the demo's
    config, each pretraining file as the demo passes it, and the shard size is the backbone's input size (a mismatch
    would fail after sharding)."""
    import json
    import os

    from cluster.demo import DemoConfig
    from pretrain.config import load

    demo = C.load(DemoConfig, os.path.join(ROOT, "configs", config) if config else None, [])
    pcfg = load(os.path.join(ROOT, demo.pretrain), ["run=r", "data.shards=s", f"model.frames_in={demo.window_frames}"])
    vision = json.load(open(os.path.join(ROOT, "pretrain", "model_configs", f"{pcfg.model.backbone}.json")))
    assert demo.size == vision["vision_cfg"]["image_size"] == size
    assert pcfg.data.micro_batch % pcfg.data.clips_per_video == 0
    default = load(os.path.join(ROOT, "configs", "pretrain", "demo.yaml"),
                   ["run=r", "data.shards=s", f"model.frames_in={demo.window_frames}"])
    if config == "demo64.yaml":   # the bigger budget: the same model and batches as make demo's, more steps
        assert pcfg.max_steps > default.max_steps and pcfg.model == default.model and pcfg.data == default.data


@pytest.mark.parametrize("args, message", [
    (["--config", "/nonexistent/demo.yaml"], "config file [/nonexistent/demo.yaml]: not found"),
    (["n_train=-1"], "n_train and n_test must be >= 0"),
    (["calibrate_videos=900"], "DemoConfig [calibrate_videos]: the train split has 800 videos, got 900"),
])
def test_demo_bad_input_is_one_error_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.yaml").write_text("from an earlier run")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}   # a user's fresh shell
    run = subprocess.run([sys.executable, "-m", "cluster.demo", "--out", str(out), *args], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=env)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], \
        run.stderr
    assert [p.name for p in out.iterdir()] == ["demo.yaml"] and (out / "demo.yaml").read_text() == "from an earlier run"


def test_demo_refuses_an_out_made_with_other_settings_untouched(tmp_path):
    """Issue 29: `--config configs/demo32.yaml --out COPY_OF_A_64PX_DEMO` rewrote demo.yaml and the shards' config
    to 32 px, then stopped at stage 2."""
    from cluster.demo import DemoConfig
    from tests.conftest import tree_digest

    out = tmp_path / "demo"
    (out / "shards").mkdir(parents=True)
    made = C.load(DemoConfig, None, [])
    made.out = str(out)
    C.dump(made, str(out / "demo.yaml"))
    (out / "shards" / "config.yaml").write_text("size: 64\n")
    before = tree_digest(out)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}   # a user's fresh shell
    run = subprocess.run([sys.executable, "-m", "cluster.demo", "--config", "configs/demo32.yaml", "--out", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), run.stderr
    assert "size" in lines[0] and "demo.yaml" in lines[0]
    assert tree_digest(out) == before
