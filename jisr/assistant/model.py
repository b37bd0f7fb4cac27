"""Training the assistant's model, only when what it is trained from has changed.

The model file is named after a hash of everything that shapes it (pipeline
configuration, domain, rules, NLU examples, and the code of Jisr's own NLU
components), so "is the model stale?" is a file look-up, and switching
branches back and forth never retrains twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jisr.paths import BOT_DIR, MODELS_DIR, NLU_DATA_DIR, PROJECT_ROOT

logger = logging.getLogger(__name__)

MAIN_CONFIG = BOT_DIR / "config.yml"
BASELINE_CONFIG = BOT_DIR / "config.baseline.yml"
DOMAIN_DIR = BOT_DIR / "domain"
RULES_DIR = BOT_DIR / "data"
# Code that changes the features a model learns from: editing it must retrain.
FEATURE_CODE = (PROJECT_ROOT / "jisr" / "nlu" / "components.py", PROJECT_ROOT / "jisr" / "text.py")


def quiet_rasa() -> None:
    """Rasa and TensorFlow are chatty and phone home by default; Jisr's runs are neither."""
    os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("LOG_LEVEL_LIBRARIES", "ERROR")
    # Rasa logs through structlog at debug level unless told otherwise, and the
    # debug lines include message texts: never print them.
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _files(*roots: Path) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".yml", ".yaml", ".py"}))
    return found


def training_hash(config: Path = MAIN_CONFIG, *, core: bool = True) -> str:
    """A short hash of every input of a training run."""
    digest = hashlib.sha256()
    roots = [config, NLU_DATA_DIR, *FEATURE_CODE]
    if core:
        roots += [DOMAIN_DIR, RULES_DIR]
    for path in _files(*roots):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    trained_now: bool
    seconds: float


def model_path(config: Path = MAIN_CONFIG, *, core: bool = True) -> Path:
    stem = "jisr" if config == MAIN_CONFIG else config.stem.replace("config.", "")
    kind = "" if core else "-nlu"
    return MODELS_DIR / f"{stem}{kind}-{training_hash(config, core=core)}.tar.gz"


def ensure_model(config: Path = MAIN_CONFIG, *, force: bool = False, core: bool = True) -> TrainedModel:
    """The model for the current data, trained first if it does not exist yet.

    ``core=False`` trains the NLU part only (what `jisr eval` compares).
    """
    quiet_rasa()
    target = model_path(config, core=core)
    if target.exists() and not force:
        return TrainedModel(target, trained_now=False, seconds=0.0)
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    from rasa.model_training import train, train_nlu

    started = time.monotonic()
    fixed_name = target.name[: -len(".tar.gz")]
    if core:
        result = train(
            domain=str(DOMAIN_DIR),
            config=str(config),
            training_files=[str(RULES_DIR), str(NLU_DATA_DIR)],
            output=str(MODELS_DIR),
            fixed_model_name=fixed_name,
            force_training=force,
        )
        if result.code != 0 or not result.model:
            raise RuntimeError(f"Rasa training failed (code {result.code}); see the log above")
    else:
        produced = train_nlu(
            config=str(config),
            nlu_data=str(NLU_DATA_DIR),
            output=str(MODELS_DIR),
            fixed_model_name=fixed_name,
            domain=str(DOMAIN_DIR),
        )
        if not produced:
            raise RuntimeError("Rasa NLU training failed; see the log above")
    seconds = time.monotonic() - started
    logger.info("trained %s in %.0f s", target.name, seconds)
    return TrainedModel(target, trained_now=True, seconds=seconds)
