"""One config schema and loader for every recipe.

A config is a JSON object over a recipe's defaults: a top-level key replaces the default, a dict merges one
level into the default dict (except the keys a recipe names as replaced whole, e.g. a classifier's "model").
Keys starting with "_" are comments. An unknown key is an error naming it; a key of the old schemas is an
error saying what to rename it to. Relative paths in a config are relative to the parent of its folder
(the repository root for configs/*.json), or the current directory without a config file.

Keys every recipe reads: name, seed, threads, dataset_root, cache_dir, out, epochs, batch_size, optimizer,
lr, momentum, weight_decay, warmup_epochs, max_steps_per_epoch, augment, export {"path", ...}.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Optional

# Keys of the schemas before there was one, and what to write instead.
RENAMED = {
    "num_threads": '"threads"',
    "data_root": '"dataset_root"',
    "eval.conf_threshold": '"eval.score_threshold"',
    "eval.iou_threshold": 'nothing: the evaluation suppresses as the exported model file does ("export.nms_iou_threshold")',
    "eval.max_det": "nothing: the evaluation keeps what the exported model file keeps",
    "eval.batch_size": 'nothing: the evaluation runs the exported model file ("export" decides how)',
}
# Command-line options of the old schemas, and their names now.
RENAMED_OPTIONS = {"--quiet": "--no-progress", "--max-steps": "--max-steps-per-epoch", "--data-root": "--dataset-root"}


def _refuse_renamed(key: str, where: str) -> None:
    if key in RENAMED:
        raise ValueError(f"{where}: the key {key!r} was renamed: write {RENAMED[key]} instead")


def load_config(path: Optional[str], defaults: Dict, overrides: Optional[Dict] = None,
                replaced: Iterable[str] = ()) -> Dict:
    """defaults ← the JSON file at path (if any) ← overrides (already in the new schema). Returns a new dict
    with "base_dir" (what relative paths are relative to) and "_config_path". Raises ValueError naming the
    file and the key for unknown or renamed keys."""
    cfg = copy.deepcopy(defaults)
    where = str(path) if path else "config"
    user = {}
    if path:
        try:
            user = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from e
        if not isinstance(user, dict):
            raise ValueError(f"{path}: a config is a JSON object, got {type(user).__name__}")
    for source, name in ((user, where), (overrides or {}, "overrides")):
        for key, value in source.items():
            if key.startswith("_"):
                continue
            _refuse_renamed(key, name)
            if key == "export" and isinstance(value, str):
                raise ValueError(f'{name}: "export" is an object now: write "export": {{"path": {json.dumps(value)}}}')
            if key not in cfg:
                raise ValueError(f"{name}: unknown key {key!r} (known: {', '.join(sorted(k for k in cfg if not k.startswith('_')))})")
            if isinstance(value, dict) and isinstance(cfg[key], dict) and key not in replaced:
                for inner in value:
                    _refuse_renamed(f"{key}.{inner}", name)
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = copy.deepcopy(value)
    cfg["base_dir"] = str(Path(path).resolve().parent.parent) if path else os.getcwd()
    cfg["_config_path"] = str(path) if path else None
    return cfg


def resolve_path(p, cfg: Dict) -> Path:
    """A path of the config, absolute: relative ones are taken from cfg["base_dir"]."""
    p = Path(p)
    return p if p.is_absolute() else (Path(cfg["base_dir"]) / p).resolve()


def add_common_arguments(p, config_default: Optional[str], out_help: str) -> None:
    """The options every recipe takes, with the same names and meanings."""
    p.add_argument("--config", default=config_default, required=config_default is None,
                   help="JSON config (bloodcv.training.config)" + (" (default: %(default)s)" if config_default else ""))
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--export-only", action="store_true", help="no training: load OUT/last.pt, evaluate (metrics.json) and export")
    p.add_argument("--export-path", default=None, help="model file to write (default: the config's export.path)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="smoke runs: cap the steps of an epoch")
    p.add_argument("--dataset-root", default=None, help="override the config's dataset_root")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", dest="settings",
                   help='set one config value after loading, e.g. model.select_regions=false or metric_loss=null '
                        '(dotted keys reach into objects; repeatable; ablations)')


def apply_settings(cfg: Dict, settings: Iterable[str]) -> Dict:
    """cfg with each "KEY=JSON" of settings set in place: a dotted KEY reaches into nested objects, and every
    part of it must already exist (a typo is an error naming it, as in load_config)."""
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {setting!r}: write KEY=JSON, e.g. model.dropout=0.2")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--set {setting!r}: the value is not JSON ({e}); strings need quotes: key='\"text\"'") from e
        *parents, last = key.split(".")
        node = cfg
        for depth, part in enumerate(parents):
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ValueError(f"--set {setting!r}: {'.'.join(parents[:depth + 1])} is not an object of the config")
        if last not in node:
            raise ValueError(f"--set {setting!r}: unknown key {key!r}")
        node[last] = value
    return cfg


def common_overrides(args) -> Dict:
    """The config keys the common options override."""
    return {key: getattr(args, key) for key in ("epochs", "max_steps_per_epoch", "dataset_root")
            if getattr(args, key, None) is not None}
