"""ns-train csd-edit keeps its work: edits in checkpoints, resume, Ctrl-C/SIGTERM that save, OUTPUT/edited/, and
one line (exit 2) for a bad scene, flag or checkpoint, never touching the input."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_data

try:
    import nerfstudio  # noqa: F401
except ImportError:
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("nerfstudio is not installed (pip install 'csd-edit[nerfstudio]')", allow_module_level=True)

from csd_nerfstudio.scenes import write_downscaled_scene  # noqa: E402

BIN = Path(sys.executable).parent
METHOD = "csd-edit-tiny"
FAST = ["--vis", "tensorboard", "--pipeline.prompt", "recolor it", "--machine.seed", "0", "--experiment-name", "scene"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The face scene at 32 px, 9 frames (all 9 are training views: nerfstudio keeps ceil(0.9 · 9))."""
    return write_downscaled_scene(shared_data("face"), tmp_path_factory.mktemp("face32"), max_side=32, every=8)


def tree_sha1(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def copy_scene(scene: Path, dst: Path) -> Path:
    shutil.copytree(scene, dst)
    return dst


def ns_train_in_process(args, capsys, out=False):
    """ns-train's own entry point (nerfstudio.scripts.train.entrypoint) in this process: (exit code, stderr),
    or (exit code, stderr, stdout) with ``out``."""
    from nerfstudio.scripts import train

    argv = sys.argv
    sys.argv = ["ns-train", METHOD, *args]
    try:
        train.entrypoint()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return (code, captured.err, captured.out) if out else (code, captured.err)


def load_ckpt(run: Path):
    import csd_nerfstudio  # noqa: F401  (numpy scalars allowed, as nerfstudio's own load needs)

    (ckpt,) = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))[-1:]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    pipe = state["pipeline"]
    meta = json.loads(bytes(pipe["_csd.meta"].tolist()).decode())
    views = {int(k.split(".")[-1]): v for k, v in pipe.items() if k.startswith("_csd.view.")}
    return state["step"], meta, views


# -------------------------------------------------------------------------------------- bad input: one line
def _edit_json(scene, change):
    meta = json.loads((scene / "transforms.json").read_text())
    change(meta)
    (scene / "transforms.json").write_text(json.dumps(meta))


def _pickle_model(tiny_model_dir, tmp):
    model = shutil.copytree(tiny_model_dir, tmp / "pickle-model")
    for weights in model.rglob("*.safetensors"):
        torch.save({}, weights.with_suffix(".bin"))
        weights.unlink()
    return model


def _read_only_dir(tmp):
    """A folder this process cannot write in: chmod 555 for a normal user; root writes through that, so as root
    sysfs, which refuses new files even to root."""
    if os.geteuid() != 0:
        folder = tmp / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "out"
    return Path("/sys/csd-edit-test-output")


def make_case(case: str, data: Path, tmp: Path, model_dir: Path):
    """Break a copy of the scene (or pick a bad flag) for ``case``: (extra ns-train args, the texts the error line
    must hold, the --data folder)."""
    frame = lambda k: data / json.loads((data / "transforms.json").read_text())["frames"][k]["file_path"]  # noqa: E731
    if case == "missing-folder":
        return [], ["--data", "does not exist"], tmp / "no-scene"
    if case == "no-transforms":
        (data / "transforms.json").unlink()
        return [], ["transforms.json", "not found"], data
    if case == "invalid-json":
        (data / "transforms.json").write_text('{"frames": [\n  {"file_path": ')
        return [], ["transforms.json", "invalid JSON at line 2"], data
    if case == "missing-image":
        name = frame(1).name
        frame(1).unlink()
        return [], [name, "not found"], data
    if case == "corrupt-image":
        frame(1).write_bytes(frame(1).read_bytes()[:200])  # truncated
        return [], [frame(1).name, "expected a readable image"], data
    if case == "mixed-sizes":
        Image.open(frame(3)).resize((24, 32)).save(frame(3))
        return [], [frame(3).name, "one size", "24×32", "32×32"], data
    if case == "one-frame":
        _edit_json(data, lambda meta: meta.update(frames=meta["frames"][:1]))
        return [], ["at least 2 frames", "got 1"], data
    if case == "gray16":
        gray = np.asarray(Image.open(frame(2)).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(frame(2))  # a 16-bit grayscale PNG
        return [], [frame(2).name, "16-bit grayscale"], data
    if case == "empty-load-dir":
        (tmp / "empty").mkdir()
        return ["--load-dir", str(tmp / "empty")], ["--load-dir", "empty folder"], data
    if case == "run-folder-load-dir":
        (tmp / "run" / "nerfstudio_models").mkdir(parents=True)
        return ["--load-dir", str(tmp / "run")], ["--load-dir", "run folder", "nerfstudio_models"], data
    if case == "garbage-checkpoint":
        (tmp / "ckpts").mkdir()
        (tmp / "ckpts" / "step-000000009.ckpt").write_bytes(os.urandom(4096))
        return (["--load-dir", str(tmp / "ckpts")],
                ["--load-dir", "step-000000009.ckpt", "expected a nerfstudio checkpoint"], data)
    if case == "missing-model":
        return ["--pipeline.diffusion-model", str(tmp / "no-model")], ["--pipeline.diffusion-model", "no-model"], data
    if case == "pickle-only-model":
        return (["--pipeline.diffusion-model", str(_pickle_model(model_dir, tmp))],
                ["--pipeline.diffusion-model", "safetensors"], data)
    if case == "output-is-a-file":
        (tmp / "file").write_text("x")
        return ["--output-dir", str(tmp / "file" / "out")], ["--output-dir", "is a file"], data
    if case == "read-only-output":
        return ["--output-dir", str(_read_only_dir(tmp))], ["--output-dir", "refuses a new file"], data
    raise KeyError(case)


CASES = ["missing-folder", "no-transforms", "invalid-json", "missing-image", "corrupt-image", "mixed-sizes",
         "one-frame", "gray16", "empty-load-dir", "run-folder-load-dir", "garbage-checkpoint", "missing-model",
         "pickle-only-model", "output-is-a-file", "read-only-output"]


@pytest.mark.parametrize("case", CASES)
def test_bad_scene_or_flag_gets_one_line_and_exit_2_and_the_input_is_untouched(case, scene, tiny_model_dir,
                                                                               tmp_path, capsys):
    extra, expected, data = make_case(case, copy_scene(scene, tmp_path / "scene"), tmp_path, tiny_model_dir)
    args = ["--data", str(data), "--output-dir", str(tmp_path / "out"), *FAST, "--pipeline.pretrain-steps", "0",
            "--max-num-iterations", "2", *extra]  # a later --output-dir wins
    before = tree_sha1(data) if data.exists() else None
    code, err = ns_train_in_process(args, capsys)
    assert code == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"ns-train {METHOD}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for text in expected + ["expected"]:
        assert text in lines[0], (text, lines[0])
    if before is not None:
        assert tree_sha1(data) == before  # the input scene is never written to


def test_fewer_views_than_the_batch_say_n_becomes_the_view_count_and_rgba_keeps_its_alpha(scene, tmp_path, capsys):
    """An RGBA scene trains and edits (the colour is edited, each photo's alpha kept), and edit.batch above the
    number of training views edits them all, saying so."""
    data = copy_scene(scene, tmp_path / "rgba")
    alphas = {}
    for image in sorted((data / "images").glob("*.png")):
        rgb = np.asarray(Image.open(image).convert("RGB"))
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[:, :8] = 0  # a transparent strip, as a masked capture has
        Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(image)
        alphas[image.name] = alpha
    before = tree_sha1(data)
    out = tmp_path / "out"
    code, err, said = ns_train_in_process(["--data", str(data), "--output-dir", str(out), *FAST, "--timestamp",
                                           "run", "--pipeline.pretrain-steps", "0", "--pipeline.edit.batch", "50",
                                           "--max-num-iterations", "2"], capsys, out=True)
    assert code == 0, err[-3000:]
    assert "--pipeline.edit.batch 50 is more than the scene's 9 training views" in " ".join(said.split())
    run = out / "scene" / METHOD / "run"
    edited = json.loads((run / "edited" / "transforms.json").read_text())
    assert len(edited["frames"]) == 9
    _, meta, views = load_ckpt(run)
    assert meta["edited_views"] and sorted(meta["edited_views"][0]) == list(range(9))  # N became 9
    assert meta["finished"]  # the final checkpoint: loading it edits at once
    assert sorted(views) == list(range(9))
    for frame in edited["frames"]:
        img = np.asarray(Image.open(run / "edited" / frame["file_path"]))
        assert img.shape == (32, 32, 4)
        photo = frame["file_path"].split("_", 1)[1]
        assert np.array_equal(img[..., 3], alphas[photo])  # alpha kept exactly
        original = np.asarray(Image.open(data / "images" / photo))[..., :3]
        assert np.abs(img[..., :3].astype(int) - original).mean() > 2  # the colour was edited
    # A nerfstudio dataset with the input's cameras: nerfstudio's own parser reads the same poses from both.
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    def poses(folder):
        parsed = NerfstudioDataParserConfig(data=folder).setup().get_dataparser_outputs("train")
        order = np.argsort([p.name.split("_", 1)[-1] for p in parsed.image_filenames])
        return parsed.cameras.camera_to_worlds[order]

    assert torch.allclose(poses(run / "edited"), poses(data), atol=1e-6)
    assert tree_sha1(data) == before


# -------------------------------------------------------------------------------------- stop, kill, resume
@pytest.fixture
def started():
    """The ns-train processes a test starts; any still running when it ends (a failed test) are killed."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start(args, log: Path, started: list):
    # One thread: a run sharing its cores with another process otherwise spends its steps in OpenMP barriers.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    out = open(log, "w")
    proc = subprocess.Popen([str(BIN / "ns-train"), METHOD, *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    started.append(proc)
    return proc


def _wait_for(check, proc, what, timeout=240):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"ns-train ended ({proc.returncode}) before {what}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _images_equal_edits(run: Path, scene: Path):
    """Set up (no training) a trainer that loads ``run``'s checkpoint; its training images must be the saved
    edits (photos elsewhere) and its counter the saved one."""
    import dataclasses

    from csd_nerfstudio.config import method_config

    step, meta, views = load_ckpt(run)
    rng = torch.load(sorted((run / "nerfstudio_models").glob("*.ckpt"))[-1], weights_only=True)["pipeline"]["_csd.rng"]
    config = method_config(METHOD, scene, run.parent / "probe", 1, {"prompt": "recolor it", "pretrain_steps": 0})
    config = dataclasses.replace(config, load_dir=run / "nerfstudio_models")
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipe = trainer.pipeline
    assert pipe.updates == meta["updates"] and pipe.edited_views == meta["edited_views"]
    assert torch.equal(torch.get_rng_state(), rng)  # the pixel sampler's stream goes on where it stopped
    for i in range(len(pipe.images)):
        expected = views[i] if i in views else pipe.images.originals[i][..., :3].mul(255).round().to(torch.uint8)
        assert torch.equal(pipe.images.uint8(i)[..., :3], expected), i
    return pipe


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_goes_on_and_sigint_saves_with_130(scene, tmp_path, started):
    before = tree_sha1(scene)
    common = ["--data", str(scene), *FAST, "--pipeline.pretrain-steps", "0", "--pipeline.edit-rate", "4",
              "--steps-per-save", "8", "--max-num-iterations", "100000"]
    # 1. SIGKILL once a checkpoint after two updates exists (checkpoints are renamed into place: never partial).
    out1 = tmp_path / "one"
    proc = _start(common + ["--output-dir", str(out1), "--timestamp", "run"], tmp_path / "one.log", started)
    run1 = out1 / "scene" / METHOD / "run"
    _wait_for(lambda: any((run1 / "nerfstudio_models").glob("step-*.ckpt")), proc, "a checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step1, meta1, views1 = load_ckpt(run1)
    assert meta1["updates"] >= 2 and views1 and not meta1["finished"]  # steps 0, 4, 8: edits in the checkpoint
    pipe = _images_equal_edits(run1, scene)
    assert pipe.edit_start == 0  # edits had started: a resume edits on at once
    # 2. Resume from it; SIGINT during an update: the update finishes, a checkpoint and edited/ are written, 130.
    out2 = tmp_path / "two"
    log2 = tmp_path / "two.log"
    proc = _start(common + ["--output-dir", str(out2), "--timestamp", "run", "--load-dir",
                            str(run1 / "nerfstudio_models")], log2, started)
    _wait_for(lambda: "editing starts" in log2.read_text(), proc, "the first update")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log2.read_text()[-3000:]
    text = log2.read_text()
    assert f"{meta1['updates']} updates done" in text  # the counter went on from the checkpoint
    assert "Traceback" not in text
    (where,) = [line for line in text.splitlines() if "interrupted at step" in line]
    run2 = out2 / "scene" / METHOD / "run"
    step2, meta2, views2 = load_ckpt(run2)
    assert step2 > step1 and f"step-{step2:09d}.ckpt" in where and str(run2 / "edited") in where
    assert meta2["updates"] == meta1["updates"] + 1  # the update in flight finished and was saved
    assert meta2["edited_views"][: meta1["updates"]] == meta1["edited_views"]
    edited = json.loads((run2 / "edited" / "transforms.json").read_text())
    assert len(edited["frames"]) == 9
    src = {Path(f["file_path"]).name: f for f in json.loads((scene / "transforms.json").read_text())["frames"]}
    for frame in edited["frames"]:
        original = src[frame["file_path"].split("_", 1)[1]]
        assert frame["transform_matrix"] == original["transform_matrix"]  # the original cameras
        assert Image.open(run2 / "edited" / frame["file_path"]).size == Image.open(scene / original["file_path"]).size
    assert tree_sha1(scene) == before


@pytest.mark.slow
def test_sigterm_in_pretraining_saves_143_and_a_resume_goes_on_pretraining(scene, tmp_path, started):
    out = tmp_path / "out"
    log = tmp_path / "log"
    proc = _start(["--data", str(scene), *FAST, "--pipeline.pretrain-steps", "1000", "--steps-per-save", "5",
                   "--max-num-iterations", "100000", "--output-dir", str(out), "--timestamp", "run"], log, started)
    run = out / "scene" / METHOD / "run"
    _wait_for(lambda: any((run / "nerfstudio_models").glob("step-*.ckpt")), proc, "a checkpoint")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    step, meta, views = load_ckpt(run)
    assert step >= 5 and meta["updates"] == 0 and not views
    assert (run / "edited" / "transforms.json").is_file()
    pipe = _images_equal_edits(run, scene)  # the probe's own pretrain-steps is 0; the checkpoint's run had 1000
    assert pipe.edit_start == 1000  # saved inside its pretraining: the resume goes on pretraining


def test_a_second_signal_quits_at_once(scene, tmp_path, started):
    out = tmp_path / "out"
    log = tmp_path / "log"
    proc = _start(["--data", str(scene), *FAST, "--pipeline.pretrain-steps", "0", "--steps-per-save", "1000",
                   "--pipeline.edit.steps", "100000", "--max-num-iterations", "100000", "--output-dir", str(out),
                   "--timestamp", "run"], log, started)  # an update that takes minutes
    _wait_for(lambda: "editing starts" in log.read_text(), proc, "the first update")
    proc.send_signal(signal.SIGINT)
    _wait_for(lambda: "stopping after this step" in log.read_text(), proc, "the first signal's answer")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "quitting now without saving" in log.read_text()
    assert not list((out / "scene" / METHOD / "run").glob("nerfstudio_models/*.ckpt"))


def test_fitted_scenes_are_edited_at_once_and_a_stopped_pretrain_goes_on(scene, tmp_path):
    """No edit state (plain nerfacto, splatfacto), or ours from a run that finished (a pretrain-only run, as
    evaluate's base scene): a fitted scene, edited at once. Ours stopped inside its pretraining: it goes on."""
    from csd_nerfstudio.config import method_config

    def pipeline(pretrain):
        config = method_config(METHOD, scene, tmp_path, 1, {"prompt": "recolor it", "pretrain_steps": pretrain})
        return config.pipeline.setup(device="cpu", test_mode="val")

    saved = pipeline(500)
    pipe = pipeline(1500)
    assert pipe.edit_start == 1500
    pipe.load_pipeline({k: v for k, v in saved.state_dict().items() if not k.startswith("_csd.")}, step=29999)
    assert pipe.edit_start == 0 and pipe.updates == 0
    saved.finished = True
    pipe.load_pipeline(saved.state_dict(), step=499)
    assert pipe.edit_start == 0
    saved.finished = False
    pipe.load_pipeline(saved.state_dict(), step=199)
    assert pipe.edit_start == 500  # the saved run's own pretraining goes on


def test_evaluate_refuses_an_output_inside_the_scene(scene, tmp_path, capsys):
    from csd_nerfstudio.evaluate import main

    data = copy_scene(scene, tmp_path / "scene")
    before = tree_sha1(data)
    for output in (data, data / "eval"):
        # one caption: refused just after the output check, so a missing check fails here instead of running
        assert main(["--data", str(data), "--output", str(output), "--captions", "one"]) == 2
        err = capsys.readouterr().err
        assert "--output" in err and "inside --data" in err, err
    assert tree_sha1(data) == before
