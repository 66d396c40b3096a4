"""The launchers of ``configs/hydra/launcher/slurm.yaml`` and ``local.yaml``.

Each is the plugin's launcher (hydra-submitit-launcher's ``SlurmLauncher``, hydra-joblib-launcher's
``JoblibLauncher``, with their configuration schemas) with one change: the plugins return at the first job
that failed (submitit raises while the other jobs still run; joblib cancels the jobs not started), so a sweep
ends with a traceback and tells nothing about the other jobs. Here every job runs to its end; each job's end
is recorded in ``<sweep>/jobs.json`` (:func:`pinn_lora.store.sweeps.record`), and a job that did not complete is
given back to Hydra as a job without a return value, so the sweep ends normally and the command names the
jobs that did not finish (:func:`pinn_lora.store.sweeps.unfinished_message`) and exits with
:data:`pinn_lora.store.sweeps.EXIT_JOBS_FAILED`. Written against hydra-submitit-launcher 1.2 and
hydra-joblib-launcher 1.2 (their ``launch`` methods, apart from the waiting, are theirs)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def _job_dir(config: DictConfig, hydra_context: Any, overrides: Sequence[str], num: int) -> tuple[Optional[str], bool]:
    """The job's run directory relative to the sweep directory (``burgers/lora/3``), as Hydra will make it, and
    whether the job is given ``resume=true``."""
    try:
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = num
        return str(OmegaConf.select(cfg, "hydra.sweep.subdir")), OmegaConf.select(cfg, "resume") is True
    except Exception:  # a job whose config does not load fails on its own; name it by number then
        return None, False


def _finished(sweep_dir: Path, job_dir: Optional[str], resume: bool) -> bool:
    """A job of a resumed sweep whose run finished already: it is not started again."""
    from pinn_lora.store.sweeps import resume_action

    return resume and job_dir is not None and resume_action(sweep_dir / job_dir) == "skip"


def _varying(job_overrides: Sequence[Sequence[str]]) -> List[List[str]]:
    """Each job's overrides that not all jobs share (``seed=1 method=lora``): what tells a job from the others."""
    shared = set.intersection(*(set(o) for o in job_overrides)) if len(job_overrides) > 1 else set()
    return [[o for o in filter_overrides(overrides) if o not in shared and not o.startswith("out=")]
            for overrides in job_overrides]


def _placeholder(overrides: Sequence[str]) -> JobReturn:
    """What Hydra is given for a job that did not complete (its end is in jobs.json)."""
    ret = JobReturn()
    ret.overrides = list(overrides)
    ret.status = JobStatus.COMPLETED
    ret.return_value = None
    return ret


def _outcome(num: int, overrides: Sequence[str], job_dir: Optional[str], state: str,
             exit_code: Optional[int] = None, message: Optional[str] = None,
             job_id: Optional[str] = None) -> Dict[str, Any]:
    out: Dict[str, Any] = {"num": num, "dir": job_dir, "overrides": list(overrides),
                           "state": state, "exit_code": exit_code, "message": message}
    if job_id is not None:
        out["job_id"] = job_id
    return out


def _from_return(ret: JobReturn) -> tuple[str, Optional[str]]:
    """A job that returned: ``completed``, or ``failed`` with the exception Hydra caught in it."""
    if ret.status == JobStatus.FAILED:
        exc = ret._return_value
        return "failed", f"{type(exc).__name__}: {exc}"
    return "completed", None


try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurm
except ImportError:  # the plugin is not installed: `hydra/launcher=slurm` says so (pinn_lora.cli.common.check_launcher)
    _SubmititSlurm = None  # type: ignore[assignment,misc]

if _SubmititSlurm is not None:

    class SlurmLauncher(_SubmititSlurm):  # type: ignore[misc,valid-type]
        """hydra-submitit-launcher's SLURM launcher; waits for every job of the array (see the module)."""

        def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
            """In the job: SLURM's warning before the time limit (SIGUSR2, ``signal_delay_s`` ahead; also sent
            on preemption) stops the run as SIGTERM does, with a checkpoint of its last verified state, so
            ``resume=true`` continues it (submitit's own handler would raise in the middle of a step)."""
            import signal

            def on_warning(signum: int, frame: Any) -> None:  # what SIGTERM does now: in the training loop,
                handler = signal.getsignal(signal.SIGTERM)      # stop at the next verified checkpoint
                if callable(handler):
                    handler(signum, frame)

            signal.signal(signal.SIGUSR2, on_warning)
            return super().__call__(*args, **kwargs)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            import submitit

            from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
            from pinn_lora.store import sweeps

            assert self.config is not None and self.hydra_context is not None
            num_jobs = len(job_overrides)
            assert num_jobs > 0
            # --- the plugin's launch (hydra-submitit-launcher 1.2), up to the submission
            params = self.params
            init_params = {"folder": self.params["submitit_folder"]}
            specific_init_keys = {"max_num_timeout"}
            init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
            init_keys = specific_init_keys | {"submitit_folder"}
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
            baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
            params = {x if x in baseparams else f"{self._EXECUTOR}_{x}": y
                      for x, y in params.items() if x not in init_keys}
            executor.update_parameters(**params)
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            job_params: List[Any] = []
            varying = _varying(job_overrides)
            outcomes: List[Dict[str, Any]] = []
            for idx, overrides in enumerate(job_overrides):
                idx = initial_job_idx + idx
                job_dir, resume = _job_dir(self.config, self.hydra_context, overrides, idx)
                if _finished(sweep_dir, job_dir, resume):  # resume=true: a finished run is not submitted again
                    log.info(f"\t#{idx} : finished already ({job_dir})")
                    outcomes.append(_outcome(idx, varying[idx - initial_job_idx], job_dir, "completed"))
                    continue
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                   Singleton.get_state()))
            jobs = executor.map_array(self, *zip(*job_params)) if job_params else []
            _remove_submission_links(Path(str(self.params["submitit_folder"])))
            # --- every job to its end, whichever order they end in
            print(f"sweep: {len(jobs)} SLURM jobs submitted ({', '.join(j.job_id for j in jobs[:3])}"
                  f"{' ...' if len(jobs) > 3 else ''}), {num_jobs - len(jobs)} finished already; waiting for them",
                  file=sys.stderr, flush=True)
            _wait_all(jobs)
            for (overrides, _, num, _, _), job in zip(job_params, jobs):
                shown = varying[num - initial_job_idx]
                job_dir, _ = _job_dir(self.config, self.hydra_context, overrides, num)
                ret, state, code, message = None, None, None, None
                if job.paths.result_pickle.exists():
                    try:
                        ret = job.result()
                    except Exception as exc:  # the job raised (its traceback is in the result)
                        state, message = "failed", str(exc).strip().splitlines()[-1][:500]
                if ret is not None:
                    state, message = _from_return(ret)
                if state is None or state != "completed":
                    log_text = _read(job.paths.stderr)
                    code = sweeps.srun_exit_code(log_text)
                    state = sweeps.slurm_state(job.state) if state is None else state
                    if state == "failed" and sweeps.signal_state(code):
                        state = "interrupted"
                    message = sweeps.error_line(log_text) or message
                outcomes.append(_outcome(num, shown, job_dir, state, code, message, job.job_id))
            sweeps.record(sweep_dir, outcomes)
            return [_placeholder(o) for o in job_overrides]  # each job's end is in jobs.json


def _remove_submission_links(folder: Path) -> None:
    """submitit leaves a symbolic link per submission (``.submission_file_<id>.sh``, to the sbatch script it
    moved into the job's folder) beside the job folders; pinn_lora refuses to resume a sweep directory holding
    links it did not make, so the launcher removes the ones its submission left."""
    parent = folder.parent if "%" in folder.name else folder
    for link in parent.glob(".submission_file_*"):
        if link.is_symlink():
            link.unlink()


def _wait_all(jobs: Sequence[Any], poll_s: float = 1.0, sacct_every_s: float = 10.0) -> None:
    """Until every job has ended. A job that ends normally leaves its result file (seen within ``poll_s``); one
    that failed or was cancelled is seen through sacct, asked every ``sacct_every_s`` for all of them at once
    (submitit's own wait asks ever more rarely, every minute or more in a long sweep)."""
    import time

    pending, last = list(jobs), time.monotonic()
    while pending:
        force = time.monotonic() - last >= sacct_every_s
        if force:
            last = time.monotonic()
        pending = [j for i, j in enumerate(pending) if not j.done(force_check=force and i == 0)]
        if pending:
            time.sleep(poll_s)


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _Joblib
except ImportError:
    _Joblib = None  # type: ignore[assignment,misc]


class _Tee:
    """The job's stderr, also kept (its last ``error:`` line names why the job failed)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.kept = stream, []

    def write(self, text: str) -> int:
        self.kept.append(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _execute_job_to_its_end(idx: int, overrides: Sequence[str], hydra_context: Any, config: DictConfig,
                            task_function: Any, singleton_state: Dict[Any, Any]) -> tuple:
    """hydra-joblib-launcher's ``execute_job`` in a loky worker; a job that exits (bad input: SystemExit 2, a
    SIGTERM: 143) or raises ends here, so joblib runs the others. Returns (JobReturn or None, state, code,
    message)."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    from pinn_lora.store import sweeps

    tee = _Tee(sys.stderr)
    sys.stderr = tee
    try:
        ret = execute_job(idx, overrides, hydra_context, config, task_function, singleton_state)
        state, message = _from_return(ret)
        return ret, state, None, message
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        state = sweeps.signal_state(code) or ("completed" if code == 0 else "failed")
        return None, state, code, sweeps.error_line("".join(tee.kept))
    except BaseException as exc:  # noqa: BLE001 (a KeyboardInterrupt in the worker included)
        return None, "failed", None, f"{type(exc).__name__}: {exc}"
    finally:
        sys.stderr = tee.stream


if _Joblib is not None:

    class JoblibLauncher(_Joblib):  # type: ignore[misc,valid-type]
        """hydra-joblib-launcher's launcher; runs every job to its end (see the module)."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from hydra.core.utils import configure_log, setup_globals
            from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
            from joblib import Parallel, delayed  # type: ignore

            from pinn_lora.store import sweeps

            # --- the plugin's launch (hydra-joblib-launcher 1.2), with execute_job wrapped
            setup_globals()
            assert self.config is not None and self.task_function is not None and self.hydra_context is not None
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            joblib_cfg = self.joblib
            joblib_cfg["backend"] = "loky"
            process_joblib_cfg(joblib_cfg)
            log.info("Joblib.Parallel({}) is launching {} jobs".format(
                ",".join([f"{k}={v}" for k, v in joblib_cfg.items()]), len(job_overrides)))
            for idx, overrides in enumerate(job_overrides):
                log.info("\t#{} : {}".format(idx, " ".join(filter_overrides(overrides))))
            singleton_state = Singleton.get_state()
            varying = _varying(job_overrides)
            dirs = [_job_dir(self.config, self.hydra_context, o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
            todo = [i for i, (job_dir, resume) in enumerate(dirs) if not _finished(sweep_dir, job_dir, resume)]
            ends = dict(zip(todo, Parallel(**joblib_cfg)(
                delayed(_execute_job_to_its_end)(initial_job_idx + i, job_overrides[i], self.hydra_context,
                                                 self.config, self.task_function, singleton_state)
                for i in todo))) if todo else {}
            outcomes = []
            for i in range(len(job_overrides)):
                _, state, code, message = ends.get(i, (None, "completed", None, None))
                outcomes.append(_outcome(initial_job_idx + i, varying[i], dirs[i][0], state, code, message))
            sweeps.record(sweep_dir, outcomes)
            return [_placeholder(o) for o in job_overrides]  # each job's end is in jobs.json


def register() -> None:
    """Make these launchers known to Hydra in this process. Hydra finds plugins by listing the
    ``hydra_plugins`` package's folders, which misses a package installed in editable mode (``pip install -e``:
    its folder is reached through an import hook); a regular install needs no help."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    plugins = Plugins.instance()
    for cls in (globals().get("SlurmLauncher"), globals().get("JoblibLauncher")):
        name = f"{cls.__module__}.{cls.__name__}" if cls is not None else None
        if name is not None and name not in plugins.class_name_to_class:
            plugins.class_name_to_class[name] = cls
            plugins.plugin_type_to_subclass_list[Launcher].append(cls)
