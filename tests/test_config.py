"""The one tree of settings: every default is declared once, every setting is validated where it is built."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest

from csd2d.config import (PRESET_DIR, ConfigError, EditConfig, PanoramaConfig, StepConfig, VideoConfig, load_preset,
                          preset_names)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [ROOT / "csd2d", ROOT / "csd_nerfstudio"]
CONFIGS = (StepConfig, EditConfig, PanoramaConfig, VideoConfig)


def _setting_defaults():
    """{field name: {default values the config classes give it}}."""
    out = {}
    for cls in CONFIGS:
        for f in dataclasses.fields(cls):
            if f.init and f.default is not dataclasses.MISSING:
                out.setdefault(f.name, set()).add(f.default)
    return out


def _literal(node):
    try:
        return True, ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return False, None


def _sources():
    for pkg in PACKAGES:
        for path in sorted(pkg.rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def test_no_default_is_declared_twice():
    """A setting's default lives in one place. Flagged copies: a function parameter named like a setting with a
    default of its own (low-level functions take a config, or no default that could disagree); a keyword or dict
    entry that sets a setting to the value it already has by default (a copy that would silently disagree once the
    default changes); a config subclass re-declaring a field with its parent's default."""
    defaults = _setting_defaults()
    problems = []
    for path, tree in _sources():
        rel = path.relative_to(ROOT)
        own_settings = "tiny" not in rel.parts  # the embedded model's trainer has settings of its own
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
                pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                for arg, default in pairs:
                    ok, value = _literal(default)
                    if own_settings and arg.arg in defaults and ok and value is not None \
                            and _same(value, defaults[arg.arg]):
                        problems.append(f"{rel}:{node.lineno} {node.name}({arg.arg}={value!r}) repeats a setting's "
                                        "default")
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                cls_defaults = _class_defaults(name)
                for kw in node.keywords:
                    ok, value = _literal(kw.value)
                    if kw.arg in cls_defaults and ok and _same(value, [cls_defaults[kw.arg]]):
                        problems.append(f"{rel}:{node.lineno} {name}({kw.arg}={value!r}) copies the default")
            if isinstance(node, ast.ClassDef) and path.name == "config.py" and path.parent.name == "csd2d":
                cls = next((c for c in CONFIGS if c.__name__ == node.name), None)
                parent = cls.__mro__[1] if cls is not None else None
                if parent is None or not dataclasses.is_dataclass(parent):
                    continue
                inherited = {f.name: f.default for f in dataclasses.fields(parent)}
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
                        name = stmt.target.id
                        ok, value = _literal(stmt.value)
                        if name in inherited and ok and value == inherited[name]:
                            problems.append(f"{rel}:{stmt.lineno} {node.name}.{name} re-declares its parent's default")
    assert not problems, "\n".join(problems)


def _class_defaults(name: str) -> dict:
    """Field defaults of the config class called ``name`` (csd2d's, or any ``*Config`` dataclass subclassing
    them that the packages export), or {} for other callables."""
    import csd2d.config as config_module

    cls = getattr(config_module, name, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and issubclass(cls, StepConfig)):
        return {}
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _same(value, options):
    return any(type(value) is type(o) and value == o for o in options)


def test_the_duplicate_finder_finds_duplicates(tmp_path, monkeypatch):
    """The check above can fail: a function default and a copied keyword are both reported."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "mod.py").write_text("def f(x, guidance_scale=7.5):\n    return EditConfig(t_min=20, t_max=900)\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGES", [pkg])
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    with pytest.raises(AssertionError) as info:
        test_no_default_is_declared_twice()
    assert "guidance_scale" in str(info.value) and "t_min=20" in str(info.value) and "t_max" not in str(info.value)


@pytest.mark.parametrize("name", ["image", "region", "video"])
def test_presets_list_only_what_differs(name):
    cls = VideoConfig if name == "video" else PanoramaConfig
    import yaml

    data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}
    base = cls()
    same = {k: v for k, v in data.items() if getattr(base, k) == v}
    assert not same, f"preset {name} repeats defaults {same}"
    assert load_preset(name, cls) == dataclasses.replace(base, **data)


def test_region_preset_changes_what_it_says():
    cfg = load_preset("region", PanoramaConfig)
    assert (cfg.steps, cfg.blend) == (300, 0.3) and cfg.lr == PanoramaConfig().lr
    assert preset_names() == ["image", "region", "video"]


def test_step_config_is_one_class():
    import csd2d
    import csd2d.csd

    assert csd2d.StepConfig is StepConfig and issubclass(EditConfig, StepConfig)
    assert not hasattr(csd2d.csd, "StepConfig") or csd2d.csd.StepConfig is StepConfig


BAD = [
    (StepConfig, "guidance_scale", math.nan), (StepConfig, "guidance_scale", math.inf),
    (StepConfig, "image_guidance_scale", -1.0), (StepConfig, "image_guidance_scale", math.nan),
    (StepConfig, "t_min", -1), (StepConfig, "t_max", 10), (StepConfig, "t_min", 2.5),
    (StepConfig, "repulsion", math.nan), (StepConfig, "bandwidth", 0.0), (StepConfig, "bandwidth", math.inf),
    (StepConfig, "max_batch", 0), (StepConfig, "coupling", "yes"),
    (EditConfig, "lr", math.nan), (EditConfig, "lr", math.inf), (EditConfig, "lr", 0.0), (EditConfig, "lr", "fast"),
    (EditConfig, "steps", 2.7), (EditConfig, "steps", 0), (EditConfig, "steps", True), (EditConfig, "batch", 0),
    (EditConfig, "lr_decay", 0.0), (EditConfig, "lr_decay", math.nan), (EditConfig, "decay_every", 0),
    (EditConfig, "vae_tile", -5), (EditConfig, "vae_tile", 32), (EditConfig, "vae_overlap", -1),
    (EditConfig, "source_prompt", 3), (EditConfig, "seed", 1.5),
    (PanoramaConfig, "window", 0), (PanoramaConfig, "stride", 0), (PanoramaConfig, "blend", 0.0),
    (PanoramaConfig, "blend", math.nan), (VideoConfig, "overlap", 8), (VideoConfig, "overlap", -1),
]


@pytest.mark.parametrize("cls,name,value", BAD, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in BAD])
def test_bad_settings_name_their_field(cls, name, value):
    kwargs = {name: value}
    if name == "t_max":
        kwargs["t_min"] = 20
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.field == name and str(info.value).startswith(f"{name}: expected")
    assert repr(value) in str(info.value) or name == "t_max"


def test_each_field_is_blamed_for_itself():
    """--vae-tile -5 blames vae_tile (not window/stride); --window 0 blames window (not stride)."""
    with pytest.raises(ConfigError) as info:
        PanoramaConfig(vae_tile=-5)
    assert info.value.field == "vae_tile"
    with pytest.raises(ConfigError) as info:
        PanoramaConfig(window=0)
    assert info.value.field == "window"
    with pytest.raises(ConfigError) as info:  # the 12,800-call hang: overlap as large as the tile
        PanoramaConfig(vae_tile=64, vae_overlap=64)
    assert info.value.field == "vae_overlap"


def test_good_settings_pass():
    PanoramaConfig(vae_tile=0, vae_overlap=10_000, bandwidth=2.0, max_batch=3, lr=1, guidance_scale=0)
    VideoConfig(overlap=0, batch=1)


PRESET_ERRORS = [
    ("syntax: [unclosed", "preset", "YAML"),
    ("lr: fast", "lr", "a number"),
    ("steps: 2.7", "steps", "an integer"),
    ("stride: 0", "stride", "1 <= stride"),
    ("lr: .nan", "lr", "finite"),
    ("nonsense: 1", "nonsense", "unknown option"),
    ("- a list", "preset", "mapping"),
]


@pytest.mark.parametrize("text,field,words", PRESET_ERRORS)
def test_bad_preset_is_one_line_naming_file_and_key(tmp_path, text, field, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_preset(path, PanoramaConfig)
    message = str(info.value)
    assert info.value.field == field and message.startswith(f"{field}:")
    assert str(path) in message and words in message and "\n" not in message


def test_presets_ship_inside_the_package():
    import csd2d

    assert PRESET_DIR.parent == Path(csd2d.__file__).resolve().parent
    assert not (ROOT / "configs").exists(), "presets live in csd2d/presets only"


def test_metrics_do_not_depend_on_the_embedded_model():
    """``csd2d.metrics`` is model-independent: it does not import the embedded model's package."""
    import ast as _ast

    tree = _ast.parse((ROOT / "csd2d" / "metrics.py").read_text())
    imported = {n.module or "" for n in _ast.walk(tree) if isinstance(n, _ast.ImportFrom)}
    imported |= {a.name for n in _ast.walk(tree) if isinstance(n, _ast.Import) for a in n.names}
    assert not any("tiny" in m for m in imported), imported
