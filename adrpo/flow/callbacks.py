"""What a :class:`adrpo.flow.trainer.FlowTrainer` calls while it trains: the callback protocol,
the collapse monitor every run gets by default, and a stop request every process agrees on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from adrpo.core.monitor import CollapseMonitor, Thresholds
from adrpo.flow.config import FlowConfig

if TYPE_CHECKING:
    from adrpo.flow.trainer import FlowTrainer


class FlowCallback(Protocol):
    """Sees every logged row (``{"step": s, ...}``, as written to ``metrics.jsonl``) on the main
    process; may set ``trainer.should_stop = True``. An optional ``on_train_begin(trainer, rows)``
    receives the rows already in ``metrics.jsonl`` when training starts (those a resumed run kept)."""

    def on_log(self, trainer: FlowTrainer, row: dict[str, float]) -> None: ...


def with_default_monitor(callbacks: Sequence[FlowCallback], config: FlowConfig) -> list[FlowCallback]:
    """``callbacks`` plus the collapse monitor built from ``config.monitor`` and
    ``config.monitor_thresholds`` (recording to ``output_dir/alarms.jsonl``), unless the monitor
    is "off" or one of ``callbacks`` already is a :class:`CollapseMonitor`."""
    chosen = list(callbacks)
    if config.monitor != "off" and not any(isinstance(c, CollapseMonitor) for c in chosen):
        thresholds = Thresholds.from_dict(config.monitor_thresholds)
        chosen.append(CollapseMonitor(thresholds, policy=config.monitor, path=Path(config.output_dir) / "alarms.jsonl"))
    return chosen


def stop_agreed(accelerator: Accelerator, requested: bool) -> bool:
    """The main process's ``requested`` (callbacks run there), on every process."""
    if accelerator.num_processes == 1:
        return requested
    return bool(broadcast_object_list([requested], from_process=0)[0])
