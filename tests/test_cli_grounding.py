"""Bad input to the grounding commands and shards.synthetic, run as a user runs them: a fresh `python -m ...`
process each. Every case must end with exit 2, exactly one `error:` line on stderr that names the file or key at
fault, and no traceback; none may exit 0 on input that cannot be meant. Plus: open_clip says nothing about
random weights, a decode over its bound stops with one line, and a caller killed mid-decode leaves no ffmpeg."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from shards.decode import ffmpeg_exe

from conftest import ROOT, shared_path

ENV = dict(os.environ, PYTHONPATH=str(ROOT), STG_DEBUG="")


def run_cli(module: str, *args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Paths the cases refer to as {name}: a tiny export, a truncated one, one holding a pickled object, a real
    mp4, a file that is no video, a malformed YAML config, evaluator files."""
    import torch

    from pretrain_fixtures import tiny_export

    tmp = tmp_path_factory.mktemp("cli")
    export = tiny_export(str(tmp / "export"))
    trunc = tmp / "truncated"
    trunc.mkdir()
    blob = open(os.path.join(export, "model.pt"), "rb").read()
    (trunc / "model.pt").write_bytes(blob[: len(blob) // 2])
    (trunc / "model_config.json").write_text(open(os.path.join(export, "model_config.json")).read())
    pickled = tmp / "pickled"
    pickled.mkdir()
    torch.save({"weights": torch.zeros(2), "hook": _Pickled()}, str(pickled / "model.pt"))
    (pickled / "model_config.json").write_text(open(os.path.join(export, "model_config.json")).read())
    (tmp / "junk.mp4").write_bytes(b"this is not a video\n" * 50)
    (tmp / "bad.yaml").write_text("fps: [1, 2\ninference: {tau: 0.5\n")
    (tmp / "pool.json").write_text("{not json")
    (tmp / "didemo_pred.json").write_text(json.dumps({"0": [[9, 9]]}))
    ann = json.loads(shared_path("benchmarks", "didemo", "test_data.json").read_text())
    (tmp / "didemo_pred.json").write_text(json.dumps({str(ann[0]["annotation_id"]): [[9, 9]]}))
    (tmp / "empty.json").write_text("{}")
    (tmp / "c" / "test").mkdir(parents=True)
    from common.config import load
    from shards.synthetic import SyntheticConfig
    from shards.synthetic.generate import generate

    generate(load(SyntheticConfig, None, [f"out={tmp / 'corpus'}", "n_train=0", "n_test=1", "max_seconds=24"]))
    return {"export": export, "trunc": str(trunc), "pickled": str(pickled), "video": str(shared_path(
        "videos", "carphone_pristine.mp4")), "junk": str(tmp / "junk.mp4"), "badyaml": str(tmp / "bad.yaml"),
        "badpool": str(tmp / "pool.json"), "tmp": str(tmp), "didemo": str(shared_path(
            "benchmarks", "didemo", "test_data.json")), "didemo_pred": str(tmp / "didemo_pred.json"),
        "empty": str(tmp / "empty.json"), "missing": str(tmp / "no_such_video.mp4")}


class _Pickled:
    """Any class: unpickling it would run code of the file's choosing."""


Q = "grounding.query"
P = "grounding.predict"
E = "grounding.evaluate"
S = "shards.synthetic"
QA = ["--checkpoint", "{export}", "--video", "{video}", "--picture", "{tmp}/q.png"]
VA = ["--checkpoint", "{export}", "--video", "{video}", "--text", "cut", "--out", "{tmp}/vis"]
PA = ["--checkpoint", "{export}", "--videos", "{video}", "--out", "{tmp}/p.json"]

# (case id, module, argv, text the error line must contain)
CASES = [
    ("query-missing-video", Q, ["--checkpoint", "{export}", "--video", "{missing}", "--text", "cut"],
     "no_such_video.mp4"),
    ("query-not-a-video", Q, ["--checkpoint", "{export}", "--video", "{junk}", "--text", "cut"], "junk.mp4"),
    ("query-empty-text", Q, QA + ["--text", ""], "--text"),
    ("query-blank-text", Q, QA + ["--text", "   "], "--text"),
    ("query-fps-zero", Q, QA + ["--text", "cut", "--fps", "0"], "--fps"),
    ("query-fps-negative", Q, QA + ["--text", "cut", "--fps", "-2"], "--fps"),
    ("query-fps-nan", Q, QA + ["--text", "cut", "--fps", "nan"], "--fps"),
    ("query-tau-nan", Q, QA + ["--text", "cut", "--tau", "nan"], "--tau"),
    ("query-missing-export", Q, ["--checkpoint", "{tmp}/nowhere", "--video", "{video}", "--text", "cut"],
     "nowhere"),
    ("query-truncated-export", Q, ["--checkpoint", "{trunc}", "--video", "{video}", "--text", "cut"], "model.pt"),
    ("query-pickled-export", Q, ["--checkpoint", "{pickled}", "--video", "{video}", "--text", "cut"], "model.pt"),
    ("query-out-reversed-truth", Q, VA + ["--truth", "3", "1"], "--truth"),
    ("query-out-negative-truth", Q, VA + ["--truth", "-1", "2"], "--truth"),
    ("query-out-fps-zero", Q, VA + ["--fps", "0"], "--fps"),
    ("query-out-empty-text", Q, ["--checkpoint", "{export}", "--video", "{video}", "--text", "", "--out",
                                 "{tmp}/vis"], "--text"),
    ("query-out-missing-video", Q, ["--checkpoint", "{export}", "--video", "{missing}", "--text", "cut", "--out",
                                    "{tmp}/vis"], "no_such_video.mp4"),
    ("predict-missing-video-with-pool", P, ["--checkpoint", "{export}", "--videos", "{missing}", "--pool", "cut",
                                           "--out", "{tmp}/p.json"], "no_such_video.mp4"),
    ("predict-not-a-video-with-pool", P, ["--checkpoint", "{export}", "--videos", "{junk}", "--pool", "cut",
                                         "--out", "{tmp}/p.json"], "junk.mp4"),
    ("predict-empty-pool", P, PA + ["--pool", " ; ;"], "--pool"),
    ("predict-pool-empty-string", P, PA + ["--pool", ""], "--pool"),
    ("predict-pool-file-missing", P, PA + ["--pool", "{tmp}/no_pool.json"], "no_pool.json"),
    ("query-fps-1e9", Q, QA + ["--text", "cut", "--fps", "1e9"], "carphone_pristine.mp4"),
    ("calibrate-on-a-test-split", "grounding.calibrate", ["--checkpoint", "{export}", "--split", "{tmp}/c/test"],
     "test split"),
    ("predict-pool-only-background", P, PA + ["--pool", "background"], "--pool"),
    ("predict-out-is-a-folder", P, ["--checkpoint", "{export}", "--videos", "{video}", "--pool", "cut", "--out",
                                    "{tmp}"], "--out"),
    ("predict-pool-bad-json", P, PA + ["--pool", "{badpool}"], "pool.json"),
    ("predict-no-pool", P, PA, "--pool"),
    ("predict-fps-zero", P, PA + ["--pool", "cut", "fps=0"], "fps"),
    ("predict-fps-negative", P, PA + ["--pool", "cut", "fps=-1"], "fps"),
    ("predict-size-negative", P, PA + ["--pool", "cut", "size=-5"], "size"),
    ("predict-box-threshold-out-of-range", P, PA + ["--pool", "cut", "inference.box_threshold=2"],
     "box_threshold"),
    ("predict-smooth-even", P, PA + ["--pool", "cut", "inference.smooth=2"], "smooth"),
    ("predict-normalize-unknown", P, PA + ["--pool", "cut", "inference.normalize=minmax"], "normalize"),
    ("predict-unknown-key", P, PA + ["--pool", "cut", "inference.nope=1"], "nope"),
    ("predict-malformed-yaml", P, PA + ["--pool", "cut", "--config", "{badyaml}"], "bad.yaml"),
    ("predict-missing-pointing-annotations", P, PA + ["--pointing", "{tmp}/no_truth"], "no_truth"),
    ("predict-truncated-export", P, ["--checkpoint", "{trunc}", "--videos", "{video}", "--pool", "cut", "--out",
                                     "{tmp}/p.json"], "model.pt"),
    ("evaluate-didemo-out-of-range", E, ["didemo", "--annotations", "{didemo}", "--predictions",
                                         "{didemo_pred}"], "didemo_pred.json"),
    ("evaluate-malformed-yaml", E, ["didemo", "--annotations", "{didemo}", "--predictions", "{empty}",
                                    "--config", "{badyaml}"], "bad.yaml"),
    ("evaluate-nms-out-of-range", E, ["charades_sta", "--annotations", "{didemo}", "--predictions", "{empty}",
                                      "charades_nms=3"], "charades_nms"),
    ("evaluate-threshold-out-of-range", E, ["vidstg", "--annotations", "{didemo}", "--predictions", "{empty}",
                                            "viou_thresholds=[0.3,1.5]"], "viou_thresholds"),
    ("evaluate-stvg-fps-zero", E, ["vidstg", "--annotations", "{didemo}", "--predictions", "{empty}",
                                   "stvg_fps=0"], "stvg_fps"),
    ("synthetic-malformed-yaml", S, ["--out", "{tmp}/syn", "--config", "{badyaml}"], "bad.yaml"),
    ("synthetic-negative-seed", S, ["--out", "{tmp}/syn", "seed=-1", "n_train=0", "n_test=1"], "seed"),
    ("synthetic-huge-duration", S, ["--out", "{tmp}/syn", "max_seconds=100000000"], "max_seconds"),
    ("synthetic-huge-frame", S, ["--out", "{tmp}/syn", "width=100000"], "width"),
    ("synthetic-out-is-a-file", S, ["--out", "{badyaml}", "n_train=0", "n_test=1"], "bad.yaml"),
    ("synthetic-fps-out-of-range", S, ["--out", "{tmp}/syn", "fps=100000"], "fps"),
    ("synthetic-out-holds-another-corpus", S, ["--out", "{tmp}/corpus", "n_train=1", "n_test=1"], "n_train"),
]


def check_one_line_error(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, f"exit {r.returncode}; stderr: {r.stderr[-1500:]}"
    assert "Traceback" not in r.stderr, r.stderr[-1500:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr[-1500:]
    assert needle in errors[0], errors[0]


@pytest.mark.parametrize("case,module,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(inputs, case, module, argv, needle):
    from conftest import tree_digest

    corpus = tree_digest(os.path.join(inputs["tmp"], "corpus"))
    r = run_cli(module, *[a.format(**inputs) for a in argv])
    check_one_line_error(r, needle)
    assert tree_digest(os.path.join(inputs["tmp"], "corpus")) == corpus  # a refusal writes nothing
    if case == "synthetic-out-is-a-file":
        assert open(inputs["badyaml"]).read().startswith("fps: [1, 2"), "the file given as --out was rewritten"


def test_query_says_nothing_about_random_weights(inputs, tmp_path):
    r = run_cli(Q, "--checkpoint", inputs["export"], "--video", inputs["video"], "--text", "cut the red cube",
                "--picture", str(tmp_path / "q.png"))
    assert r.returncode == 0, r.stderr[-1500:]
    assert "pretrained" not in r.stderr.lower() and "randomly" not in r.stderr.lower(), r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["query"] == "cut the red cube"


def test_query_writes_no_picture_unless_asked(inputs, tmp_path):
    r = subprocess.run([sys.executable, "-m", Q, "--checkpoint", inputs["export"], "--video", inputs["video"],
                        "--text", "cut the red cube"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["picture"] is None
    assert os.listdir(tmp_path) == []  # nothing written into the folder it was run from


@pytest.mark.parametrize("module", ["grounding.calibrate", "grounding.query"])
def test_help_says_whole_sentences(module):
    r = run_cli(module, "--help")
    assert r.returncode == 0, r.stderr
    description = r.stdout.split("\n\n")[1]  # after the usage lines
    assert description.rstrip().endswith((".", "?")), description  # a whole sentence, not cut mid-way


def test_huge_fps_is_refused_by_the_decode_bound(inputs, tmp_path):
    # carphone is 4 s: 1e6 fps would be 4 million frames (12 GB at the micro model's 32 px)
    r = run_cli(Q, "--checkpoint", inputs["export"], "--video", inputs["video"], "--text", "cut", "--fps", "1e6",
                "--picture", str(tmp_path / "q.png"))
    check_one_line_error(r, "carphone_pristine.mp4")
    assert "max_decode_mb" in r.stderr
    # the bound is the user's: 4 s at 50 fps of 32 px frames is 600 KB, over 0.1 MB and under 10 MB
    r = run_cli(Q, "--checkpoint", inputs["export"], "--video", inputs["video"], "--text", "cut", "--fps", "50",
                "--max-decode-mb", "0.1", "--picture", str(tmp_path / "q.png"))
    check_one_line_error(r, "max_decode_mb")
    r = run_cli(Q, "--checkpoint", inputs["export"], "--video", inputs["video"], "--text", "cut", "--fps", "50",
                "--max-decode-mb", "10", "--picture", str(tmp_path / "q.png"))
    assert r.returncode == 0, r.stderr[-1500:]


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _is_ffmpeg(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ffmpeg" in f.read().split(b"\0")[0]
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_caller_stopped_mid_decode_leaves_no_ffmpeg(inputs, tmp_path, sig):
    """The issue's case: ffmpeg busy without writing (here: decoding a long video of which a tiny fps keeps only
    the first frame), so it would not notice a dead reader; the caller (decode bound lifted) is stopped once its
    ffmpeg child runs; the child must be gone soon after."""
    video = str(tmp_path / "long.mp4")  # bikes.mp4 looped by stream copy: 320 s to decode, made in a blink
    subprocess.run([ffmpeg_exe(), "-v", "error", "-stream_loop", "31", "-i", inputs["video"], "-map", "0:v:0",
                    "-c", "copy", video], check=True)
    code = ("import sys; from shards.decode import decode_video; "
            "decode_video(sys.argv[1], fps=1e-6, size=32, transform=lambda a: 0, max_bytes=1 << 60)")
    # as from a terminal: a test run started in the background (nohup, `&`) inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler in the caller
    proc = subprocess.Popen([sys.executable, "-c", code, video], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ffmpeg = []
    for _ in range(600):
        ffmpeg = [c for c in _children(proc.pid) if _is_ffmpeg(c)]
        if ffmpeg or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert ffmpeg, f"no ffmpeg child seen; caller exited {proc.poll()}"
    time.sleep(1.0)  # ffmpeg is inside the decode now
    assert proc.poll() is None, "the decode finished before it could be stopped"
    proc.send_signal(sig)
    try:
        proc.communicate(timeout=60)  # before the fix a SIGINT'd caller waited on its busy ffmpeg for ever
        for _ in range(200):
            if not any(_alive(p) for p in ffmpeg):
                break
            time.sleep(0.05)
        assert not any(_alive(p) for p in ffmpeg), f"ffmpeg {ffmpeg} outlived its caller (signal {sig.name})"
    finally:
        for p in [proc.pid, *ffmpeg]:  # this test's own processes only
            if _alive(p):
                os.kill(p, signal.SIGKILL)
