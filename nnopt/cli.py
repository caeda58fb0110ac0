"""The ``nnopt`` command line (SPEC §4).

Only click is imported at start-up: ``nnopt --help`` and ``nnopt list`` never import torch or a
plugin, and a fully cached ``nnopt run`` is answered from the plan index without either.
Exit codes: 0 done, 1 a stage failed or diverged, 2 invalid spec or command line,
75 a needed stage is busy in another run and ``--no-wait`` was given, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

EXIT_FAILED, EXIT_SPEC, EXIT_BUSY, EXIT_INTERRUPTED = 1, 2, 75, 130


class _Group(click.Group):
    """Maps the engine's exceptions to exit codes and one-line messages (no tracebacks)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["argv"] = list(args)  # as given: `run --nproc` re-runs the same line under torchrun
        # --debug is accepted anywhere on the line (`nnopt validate f.yaml --debug` too)
        if "--debug" in args:
            ctx.meta["debug"] = True
            args = [a for a in args if a != "--debug"]
        return super().parse_args(ctx, _subcommand_options_last(args, self.commands))

    def invoke(self, ctx: click.Context) -> Any:
        from nnopt.core.errors import PluginError, SpecError
        from nnopt.core.store import CorruptStore, StageBusy

        debug = ctx.meta.get("debug", False)
        try:
            return super().invoke(ctx)
        except SpecError as err:
            if debug:
                traceback.print_exc()
            for diag in err.diagnostics:
                click.echo(str(diag), err=True)
            n = len(err.diagnostics)
            click.echo(f"{n} error{'s' if n != 1 else ''}; nothing was run", err=True)
            _json_error(ctx, "invalid", errors=[d.to_json() for d in err.diagnostics])
            ctx.exit(EXIT_SPEC)
        except PluginError as err:
            click.echo(f"error: {err}", err=True)
            _json_error(ctx, "invalid", errors=[{"message": str(err)}])
            ctx.exit(EXIT_SPEC)
        except StageBusy as err:
            click.echo(f"a stage this run needs is being computed by another run (lock {err}); --no-wait given", err=True)
            _json_error(ctx, "busy", lock=str(err))
            ctx.exit(EXIT_BUSY)
        except CorruptStore as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("interrupted: finished stages are kept; a stage that saved a checkpoint resumes from it "
                       "on the next run, any other is computed again", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # `nnopt list | head`: the reader left; say nothing more
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_FAILED)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as err:  # pragma: no cover - a bug: say so, traceback on request
            if debug:
                raise
            click.echo(f"internal error: {type(err).__name__}: {err} (rerun with --debug for a traceback)", err=True)
            ctx.exit(EXIT_FAILED)


#: options that every command taking them accepts anywhere on the line, even before its name
_ANYWHERE = {"--store": True, "--json": False}  # option -> takes a value


def _subcommand_options_last(args: list[str], commands: dict[str, click.Command]) -> list[str]:
    """``nnopt --store D --json run f.yaml`` → ``nnopt run --store D --json f.yaml``: click reads a
    subcommand's options only after its name (they may follow its arguments already)."""
    moved, rest, i = [], [], 0
    while i < len(args) and args[i] not in commands:
        a = args[i]
        name = a.split("=", 1)[0]
        if name in _ANYWHERE:
            takes_value = _ANYWHERE[name] and "=" not in a
            moved += args[i : i + 1 + takes_value]
            i += 1 + takes_value
            continue
        rest.append(a)
        i += 1
    if i == len(args) or not moved:  # no subcommand: leave the line for click to report
        return args
    return rest + [args[i]] + moved + args[i + 1 :]


def _json_error(ctx: click.Context, status: str, **fields: Any) -> None:
    """With ``--json``, a failed command still prints one JSON object on stdout."""
    if ctx.meta.get("json"):
        click.echo(json.dumps({"status": status, **fields}))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nnopt")
@click.option("--debug", is_flag=True, help="show tracebacks (accepted anywhere on the command line)")
def main(debug: bool) -> None:
    """nnopt: runnable, cached pipelines for the optimization of deep networks.

    Write a pipeline.yaml, then `nnopt run pipeline.yaml`. Every stage is stored under a
    content-addressed key, so nothing is computed twice.
    """


def _store(path: str | None):
    from nnopt.core.errors import Diagnostic, Location, SpecError
    from nnopt.core.store import Store, default_root

    root = Path(path) if path else default_root()
    if root.exists() and not root.is_dir():
        raise SpecError([Diagnostic(Location(f"--store {root}"), "", "the store must be a directory, and this is a file")])
    return Store(root)


store_option = click.option("--store", "store_dir", metavar="DIR", help="the store (default $NNOPT_HOME, else ./.nnopt)")
set_option = click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help="override a value of the file (YAML-typed)")
json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")


def _set_figure_format(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """``--figure-format``: through the environment (``figure_style.FORMAT_ENV``), so that sweep
    worker processes, which inherit it, draw the same files; a bad ``$NNOPT_FIGURE_FORMAT`` is a
    usage error before anything runs, not a failed stage."""
    from nnopt.core.figure_style import FORMAT_ENV, figure_formats

    if value:
        os.environ[FORMAT_ENV] = value
    try:
        figure_formats()
    except ValueError as bad:
        raise click.UsageError(str(bad)) from None


figure_format_option = click.option(
    "--figure-format", type=click.Choice(["png", "svg", "pdf"]), default=None, expose_value=False, is_eager=True,
    callback=_set_figure_format,
    help="also write every plot as SVG or PDF beside its PNG (the PNG is always written; default: "
         "$NNOPT_FIGURE_FORMAT, else PNG only). Plots belong to a cached stage: a cached stage keeps the "
         "figures it was drawn with (--force or --redo STAGE redraws them)")


# ---------------------------------------------------------------------------------- run
@main.command()
@click.argument("file")
@set_option
@click.option("--force", is_flag=True, help="recompute every stage")
@click.option("--redo", multiple=True, metavar="STAGE", help="recompute STAGE and what depends on it")
@store_option
@json_option
@figure_format_option
@click.option("--no-wait", is_flag=True, help="exit 75 instead of waiting for a stage another run is computing")
@click.option("--no-progress", is_flag=True, help="no progress bars on stderr")
@click.option("--track", "track", multiple=True, metavar="NAME",
              help="also stream metrics to tracker NAME (jsonl, tensorboard, mlflow; repeatable); changes no cache key")
@click.option("--nproc", type=click.IntRange(min=1), default=None, metavar="N",
              help="train stages data-parallel in N processes on this machine (re-runs this command under "
                   "torch.distributed.run; for several nodes call torchrun with its rendezvous flags)")
@click.option("--jobs", type=click.IntRange(min=1), default=None, metavar="J",
              help="run a matrix's combinations in J worker processes (threads divided among them); with ray or "
                   "slurm: at most J at once")
@click.option("--shard", default=None, metavar="I/N",
              help="run only the I-th of N shards of the combinations (1-based, round-robin over the matrix order)")
@click.option("--executor", type=click.Choice(["local", "ray", "slurm"]), default="local", show_default=True,
              help="where combinations run: worker processes here, Ray tasks (nnopt[ray]), a Slurm job array (nnopt[slurm])")
@click.option("--keep-going/--fail-fast", default=True,
              help="after a combination fails: run the others (default) / start no more; exit 1 either way")
@click.option("--ray-address", default=None, metavar="ADDR", help="with --executor ray: an existing cluster (default: a local instance)")
@click.option("--ray-cpus", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="with --ray-address: CPUs (and torch threads) of each task")
@click.option("--slurm-partition", default=None, metavar="NAME", help="with --executor slurm: the partition")
@click.option("--slurm-time", type=click.IntRange(min=1), default=60, show_default=True, metavar="MIN",
              help="with --executor slurm: time limit of each job, minutes")
@click.option("--slurm-gpus", type=click.IntRange(min=0), default=0, show_default=True, metavar="N", help="with --executor slurm: GPUs per job")
@click.option("--slurm-cpus", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="with --executor slurm: CPUs (and torch threads) per job")
@click.option("--slurm-mem", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GB", help="with --executor slurm: memory per job")
@click.option("--slurm-option", "slurm_options", multiple=True, metavar="KEY=VALUE",
              help="with --executor slurm: any other sbatch option (account=abc, qos=high)")
@click.option("--slurm-cluster", type=click.Choice(["auto", "slurm", "local", "debug"]), default="auto", show_default=True,
              help="with --executor slurm: submitit's cluster (local: the array as processes here, for trying a sweep)")
@click.option("--slurm-folder", default=None, metavar="DIR", help="with --executor slurm: submitit's job folder (default in the store)")
def run(file: str, sets: tuple[str, ...], force: bool, redo: tuple[str, ...], store_dir: str | None, as_json: bool,
        no_wait: bool, no_progress: bool, nproc: int | None, track: tuple[str, ...] = (), **sweep_opts: Any) -> None:
    """Validate FILE, plan it, and run every stage that is not cached.

    A pipeline with `matrix:` runs a combination at a time, or with --jobs J in J worker
    processes; --shard I/N runs the I-th of N shards of the combinations (1-based,
    round-robin over the matrix order); --executor ray|slurm hands them to a Ray cluster or a
    Slurm job array. Every matrix run ends with a summary table (best first), also written
    with plots under STORE/sweeps/INVOCATION/."""
    click_ctx = click.get_current_context()
    click_ctx.meta["json"] = as_json
    sweep = _sweep_options(nproc, **sweep_opts)
    if nproc is not None and nproc > 1:
        _relaunch_under_torchrun(nproc, click_ctx.find_root().meta.get("argv", []))
    from nnopt.core import distributed
    from nnopt.core.invocation import run_pipeline
    from nnopt.core.loop import INTERRUPT

    store = _store(store_dir)
    _require_file(file)
    _share_the_cpu_politely(store)
    if distributed.launched():  # under torchrun: rank 0 leads, the others compute train stages with it
        distributed.init()
        if not distributed.is_main():
            try:
                with INTERRUPT.installed():
                    sys.exit(distributed.follow(file, list(sets), store))
            finally:
                distributed.shutdown()
        click_ctx.call_on_close(distributed.shutdown)
        click_ctx.call_on_close(lambda: distributed.lead_done(0))
    click_ctx.with_resource(INTERRUPT.installed())  # Ctrl-C: the training loop stops at a safe point
    show = None if as_json else (lambda rep: click.echo(f"  {_stage_line(rep)}", err=True))
    cell = None if as_json else (lambda plan: click.echo(f"{plan.name} {_params_text(plan.params)}", err=True))
    if track and not sweep.default:
        raise click.UsageError("--track does not combine with --jobs, --shard or --executor (name the trackers in the "
                               "file's trackers: instead)")
    from nnopt.core.trackers import track_refs

    track_list = track_refs(track)  # an unknown tracker or a missing extra: exit 2 before anything runs
    if sweep.default:
        result = run_pipeline(file, list(sets), store, force=force, redo=redo, wait=not no_wait,
                              progress=not no_progress and sys.stderr.isatty(), debug=click_ctx.meta.get("debug", False),
                              on_stage=show, on_cell=cell, track=track_list)
    else:
        from nnopt.core.executors import run_sweep

        result = run_sweep(file, list(sets), store, sweep, force=force, redo=redo, wait=not no_wait,
                           progress=not no_progress and sys.stderr.isatty() and sweep.jobs in (None, 1),
                           debug=click_ctx.meta.get("debug", False), on_stage=show, on_cell=cell)
    _finish(result, as_json, _sweep_summary(store, result, sweep))


def _relaunch_under_torchrun(nproc: int, argv: list[str]) -> None:
    """``nnopt run --nproc N ...``: the same command line, without ``--nproc``, in N processes
    under ``torch.distributed.run --standalone`` (one node, a free port), as torchtune's
    ``tune run`` does; exits with rank 0's exit status (torchrun's own says only "failed")."""
    import subprocess
    import tempfile

    from nnopt.core.distributed import EXIT_FILE_ENV

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    with tempfile.TemporaryDirectory(prefix="nnopt-nproc-") as tmp:
        exit_file = os.path.join(tmp, "rank0.exit")
        env = {**os.environ, EXIT_FILE_ENV: exit_file}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "nnopt", *rest]
        try:
            code = subprocess.run(cmd, env=env).returncode
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        if os.path.isfile(exit_file):
            with open(exit_file) as f:
                code = int(f.read().strip() or code)
    sys.exit(code)


def _sweep_options(nproc: int | None, **given: Any):
    """The sweep options of ``run`` (``executors.SweepOptions``); a bad one is a usage error (exit 2)."""
    from nnopt.core.executors import SweepOptions, parse_shard

    shard = None
    if given["shard"] is not None:
        try:
            shard = parse_shard(given["shard"])
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="'--shard'") from None
    extra = {}
    for item in given["slurm_options"]:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="'--slurm-option'")
        extra[key.strip()] = value
    options = SweepOptions(jobs=given["jobs"], shard=shard, executor=given["executor"], fail_fast=not given["keep_going"],
                           ray_address=given["ray_address"], ray_cpus=given["ray_cpus"],
                           slurm_partition=given["slurm_partition"], slurm_time=given["slurm_time"],
                           slurm_gpus=given["slurm_gpus"], slurm_cpus=given["slurm_cpus"], slurm_mem_gb=given["slurm_mem"],
                           slurm_cluster=given["slurm_cluster"], slurm_folder=given["slurm_folder"], slurm_extra=extra)
    ctx = click.get_current_context()
    for name, value in given.items():  # an executor's option given for another executor is a mistake to say
        prefix = name.split("_", 1)[0]
        if prefix in ("ray", "slurm") and options.executor != prefix and \
                ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"--{name.replace('_', '-').replace('slurm-options', 'slurm-option')} is an option of "
                                   f"--executor {prefix}")
    if nproc is not None and nproc > 1 and not options.default:
        raise click.UsageError("--nproc (data-parallel training) does not combine with --jobs, --shard, --executor or --fail-fast")
    return options


def _sweep_summary(store, result, sweep) -> Any:
    """After a matrix run: its summary table and plots written to the store (``sweep_summary``)."""
    from nnopt.core.sweep_summary import is_sweep, records_of, write_summary

    records = records_of(result.reports)
    return write_summary(store, records) if records and is_sweep(records) else None


def _share_the_cpu_politely(store) -> None:
    """Register this run among the machine's nnopt runs, before torch loads; with others
    computing, its OpenMP threads wait passively (unless the user set OMP_WAIT_POLICY). Runs in
    any store share this CPU, so ``store`` is not consulted; each stage then takes its share
    of the cores (``nnopt.core.cpu_share``). Spinning threads of two runs on 2 cores slowed
    both 10-100x (measured); alone, spinning is fastest, so it stays the default."""
    from nnopt.core.cpu_share import join

    join()


def _require_file(file: str) -> None:
    from nnopt.core.errors import Diagnostic, Location, SpecError

    if not Path(file).is_file():
        raise SpecError([Diagnostic(Location(file), "", "no such pipeline file")])


def _finish(result, as_json: bool, summary=None) -> None:
    if as_json:
        out = result.to_json()
        if summary is not None:  # a matrix run: where its summary table and plots are (sweep_summary)
            out = {**out, "sweep": summary.to_json()}
        click.echo(json.dumps(out))
    else:
        # the stage lines went to stderr as each stage finished; stdout says where results are
        for r in result.reports:
            click.echo(f"{r.pipeline} {_params_text(r.params)}run {r.run}: {r.status}")
            for s in r.stages:
                click.echo(f"  {s.id:<14} {s.status:<8} {s.dir or s.message or ''}")
        if summary is not None:
            click.echo(f"\n{summary.table.markdown()}\n(written to {summary.dir})")
    from nnopt.core.gc_policy import freeze_survivors

    freeze_survivors()  # interpreter exit would otherwise walk every object once more
    sys.exit(EXIT_FAILED if result.failed else 0)


def _params_text(params: dict[str, Any]) -> str:
    """``[stages.train.optimizer.lr=0.1, seed=1]``: a matrix combination, as --set would write it."""
    shown = (f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, (dict, list)) else v}" for k, v in params.items())
    return ("[" + ", ".join(shown) + "] ") if params else ""


def _stage_line(rep) -> str:
    order = ("train_loss", "test_loss", "test_accuracy", "diverged_at_step")
    shown = {k: rep.metrics[k] for k in order if k in rep.metrics}
    numbers = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    if rep.results and not shown:
        numbers = "results: " + ", ".join(rep.results)
    extra = f"  ({rep.message})" if rep.message and rep.status in ("failed", "skipped", "diverged", "ran") else ""
    return f"{rep.id:<14} {rep.status:<8} {rep.seconds:7.2f}s  {numbers}{extra}"


# ---------------------------------------------------------------------------------- diagnose
@main.command()
@click.argument("file")
@click.option("--stage", "stage", default=None, metavar="ID", help="the train stage to diagnose (default: the first)")
@set_option
@store_option
@json_option
@click.option("--apply", "apply_to", default=None, metavar="OUT", type=click.Path(dir_okay=False),
              help="write FILE with the best verified fix applied to OUT (comments and layout kept)")
@click.option("--probe-steps", type=click.IntRange(min=10, max=100_000), default=None, metavar="N",
              help="steps of the training probe (default 200)")
@click.option("--fixes", type=click.IntRange(min=0, max=10), default=None, metavar="K",
              help="how many recommendations are tried (default 3)")
@click.option("--no-lr-range", is_flag=True, help="skip the learning-rate range test")
@click.option("--force", is_flag=True, help="diagnose again even when cached")
@click.option("--no-progress", is_flag=True, help="no progress bars on stderr")
def diagnose(file: str, stage: str | None, sets: tuple[str, ...], store_dir: str | None, as_json: bool,
             apply_to: str | None, probe_steps: int | None, fixes: int | None, no_lr_range: bool, force: bool,
             no_progress: bool) -> None:
    """Say why a train stage of FILE will not train, with evidence and fixes that were tried.

    Measures the network at initialization (signal propagation, gradients, Jacobian, dead or
    saturated units, logit scale), the curvature against the step, a short training probe and a
    learning-rate range test; each finding has an explanation, a patch of FILE (shown as a diff)
    and, for the most severe, the patched pipeline probed the same way (verified or not). The
    diagnosis is a cached `diagnose` stage: running it again is instant."""
    click_ctx = click.get_current_context()
    click_ctx.meta["json"] = as_json
    from nnopt.diagnose_file import apply_best, diagnose_file, render_text

    _require_file(file)
    if apply_to is not None and Path(apply_to).resolve() == Path(file).resolve():
        raise click.UsageError("--apply writes a new file; give a path other than FILE")
    store = _store(store_dir)
    show = None if as_json else (lambda rep: click.echo(f"  {_stage_line(rep)}", err=True))
    results = diagnose_file(file, list(sets), store, stage, probe_steps=probe_steps, fixes=fixes,
                            lr_range=False if no_lr_range else None, force=force,
                            progress=not no_progress and sys.stderr.isatty(), on_stage=show,
                            one_combination="--apply" if apply_to is not None else None)
    applied = None
    if apply_to is not None and results:
        applied = apply_best(file, results[0], apply_to)
    failed = any(d.status not in ("ran", "cached") for d in results)
    if as_json:
        out: dict[str, Any] = results[0].to_json() if len(results) == 1 and not results[0].params else {
            "combinations": [d.to_json() for d in results], "healthy": all(d.healthy for d in results)}
        if apply_to is not None:
            out["applied"] = {"file": apply_to, "finding": applied["id"]} if applied else None
        click.echo(json.dumps(out))
    else:
        click.echo("\n\n".join(render_text(d, file) for d in results))
        if apply_to is not None:
            click.echo(f"\nwrote {apply_to} with the fix for {applied['id']}" if applied else
                       "\nno verified fix: nothing written")
    sys.exit(EXIT_FAILED if failed else 0)


# ---------------------------------------------------------------------------------- plan / validate
@main.command()
@click.argument("file")
@set_option
@store_option
@json_option
def plan(file: str, sets: tuple[str, ...], store_dir: str | None, as_json: bool) -> None:
    """Validate FILE and show each stage, its key, and whether it is cached or will run and
    why (new, key changed: what, damaged: which file, incomplete); runs nothing."""
    click.get_current_context().meta["json"] = as_json
    from nnopt.core.model_size import human_bytes
    from nnopt.core.plan_reasons import previous_stages, run_reason
    from nnopt.core.planner import load_plans

    _require_file(file)
    store = _store(store_dir)
    plans = load_plans(file, list(sets))
    records = [r for r in store.runs() if r.get("pipeline") == plans[0].name]
    out = []
    for p in plans:
        previous = previous_stages(records, p.params)
        stages = []
        for s in p.stages:
            reason = run_reason(store, p, s, previous)
            stages.append({"id": s.id, "kind": s.kind, "key": s.key, "cached": reason == "cached", "from": s.deps, "reason": reason,
                           "parameters": s.param_count, "weight_bytes": s.weight_bytes})
        out.append({"pipeline": p.name, "params": p.params, "stages": stages})
    if as_json:
        click.echo(json.dumps(out[0] if len(out) == 1 and not out[0]["params"] else {"pipeline": plans[0].name, "runs": out}))
        return
    for p in out:
        click.echo(f"{p['pipeline']} {_params_text(p['params'])}")
        for s in p["stages"]:
            deps = f"  <- {', '.join(s['from'])}" if s["from"] else ""
            state = "cached" if s["cached"] else f"to run ({s['reason']})"
            size = f"{s['parameters']:,} params ({human_bytes(s['weight_bytes'])})  " if s["parameters"] is not None else ""
            click.echo(f"  {s['id']:<14} {s['kind']:<10} {s['key'][:16]}  {size}{state}{deps}")


@main.command()
@click.argument("file")
@set_option
def validate(file: str, sets: tuple[str, ...]) -> None:
    """Validate FILE only."""
    from nnopt.core.planner import load_plans

    _require_file(file)
    plans = load_plans(file, list(sets))
    n = sum(len(p.stages) for p in plans)
    click.echo(f"{file}: valid ({len(plans)} pipeline{'s' if len(plans) != 1 else ''}, {n} stages)")


# ---------------------------------------------------------------------------------- components
@main.command(name="list")
@click.argument("kind", required=False)
@click.option("--bridged", is_flag=True,
              help="also every name the bridges provide (torch.*, pytorch_optimizer.*): imports those libraries")
@json_option
def list_components(kind: str | None, bridged: bool, as_json: bool) -> None:
    """List registered components (name, kind, providing package). Imports no plugin
    (unless --bridged, which imports the bridged libraries to list their names)."""
    from nnopt.core.registry import Registry, normalize_kind

    registry = Registry()
    entries = registry.entries(normalize_kind(kind) if kind else None, bridged=bridged)
    counts: dict[tuple[str, str], int] = {}
    for e in entries:
        counts[(e.kind, e.name)] = counts.get((e.kind, e.name), 0) + 1
    if as_json:
        click.echo(json.dumps([{"kind": e.kind, "name": e.name, "provider": e.dist, "version": e.version, "entry_point": e.value,
                                "conflict": counts[(e.kind, e.name)] > 1} for e in entries]))
        return
    for e in entries:
        clash = "  CONFLICT: provided twice" if counts[(e.kind, e.name)] > 1 else ""
        click.echo(f"{e.kind:<14} {e.name:<20} {e.provider}{clash}")


@main.command()
@click.argument("kind")
@click.argument("name")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="schedules only: draw η_t over --steps steps into this PNG instead of printing")
@click.option("--set", "--param", "sets", multiple=True, metavar="KEY=VALUE",
              help="with --plot: a parameter of the schedule (YAML-typed; `then.name=cosine` for a nested one)")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="with --plot: steps T of the run drawn")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="with --plot: the optimizer's rate η₀")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=10, show_default=True,
              help="with --plot: the epoch length, for periods given in epochs")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="with --plot: the batch size, for schedules that scale with it (linear_scaling)")
def describe(kind: str, name: str, plot_path: str | None, sets: tuple[str, ...], steps: int, lr: float,
             steps_per_epoch: int, batch_size: int) -> None:
    """Print a component's docstring and parameter schema (types, defaults, ranges).

    With --plot (schedules): validate the params given with --set like a pipeline file's, and
    draw the learning rate η_t of a --steps-step run into a PNG."""
    from nnopt.core.describe import describe_component
    from nnopt.core.registry import Registry, normalize_kind

    kind = normalize_kind(kind)
    if plot_path is None:
        if sets:
            raise click.UsageError("--set/--param are only used with --plot")
        click.echo(describe_component(Registry(), kind, name))
        return
    if kind != "schedules":
        raise click.UsageError(f"--plot draws schedules, not {kind}")
    from nnopt.core.describe import configured_component, plot_schedule, schedule_curve

    schedule = configured_component(Registry(), kind, name, sets)
    try:
        curve = schedule_curve(schedule, steps, lr, steps_per_epoch, batch_size)
    except ValueError as err:  # the params are valid alone but not for this run (a warmup longer than it)
        raise click.UsageError(f"schedule '{name}' cannot run {steps} steps: {err}") from None
    settings = ", ".join(sets)
    path = plot_schedule(name, curve, plot_path, f"{name}({settings})  η₀={lr:g}" if settings else f"{name}  η₀={lr:g}")
    click.echo(f"wrote {path}: η_t for t = 0…{steps - 1}, from {curve[0]:.6g} to {curve[-1]:.6g} "
               f"(min {min(curve):.6g}, max {max(curve):.6g})")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the pipeline file (for editors)."""
    from nnopt.core.describe import pipeline_schema
    from nnopt.core.registry import Registry

    click.echo(json.dumps(pipeline_schema(Registry()), indent=2))


@main.command(name="new-plugin")
@click.argument("name")
@click.option("--kind", "kinds", multiple=True, metavar="KIND",
              help="a kind to give an example component (repeatable; default: optimizers and analyzers)")
@click.option("--dir", "parent", default=".", show_default=True, metavar="DIR", help="where the plugin's directory is created")
def new_plugin(name: str, kinds: tuple[str, ...], parent: str) -> None:
    """Scaffold a plugin distribution NAME in DIR/NAME: pyproject.toml with entry points, one
    working example component per --kind, an example pipeline.yaml, a test running it
    through the nnopt CLI, and a README. An existing DIR/NAME is never overwritten."""
    from nnopt.scaffold.names import ScaffoldError
    from nnopt.scaffold.writer import scaffold

    try:
        path = scaffold(name, kinds, parent)
    except ScaffoldError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_SPEC)
    click.echo(f"wrote {path}: pip install -e {path} && (cd {path} && pytest)")


# ---------------------------------------------------------------------------------- store
@main.command()
@click.argument("ref", default="latest")
@store_option
@json_option
def show(ref: str, store_dir: str | None, as_json: bool) -> None:
    """Show a stored invocation, run or stage: spec, status, metrics, artifact paths.

    REF is `latest` or a pipeline name (its latest invocation: every run of one `nnopt run`,
    a run per matrix combination), an invocation id, a run id (that run alone), an id prefix,
    a stage key prefix, or RUN/STAGE. A stage's artifacts are checked against their
    checksums first: a damaged stage says `damaged` and names the files.
    """
    from nnopt.core.lookup import describe_ref

    text, data = describe_ref(_store(store_dir), ref)
    click.echo(json.dumps(data) if as_json else text)


@main.command()
@store_option
@click.option("--stages", is_flag=True, help="list stage directories instead of runs")
@json_option
def ls(store_dir: str | None, stages: bool, as_json: bool) -> None:
    """List the invocations (or stages) in the store: each `nnopt run` with every run's
    params and headline metrics; repeated runs with the same outcome (cached re-runs) as one
    entry with their count."""
    from nnopt.core.lookup import list_runs, list_stages

    text, data = (list_stages if stages else list_runs)(_store(store_dir))
    click.echo(json.dumps(data) if as_json else text)


@main.command()
@store_option
@click.option("--keep-last", type=click.IntRange(min=0), default=None,
              help="keep only the newest N invocations (`nnopt run`s, all of a matrix's runs) of each pipeline")
@click.option("--dry-run", is_flag=True, help="say what would be removed")
def gc(store_dir: str | None, keep_last: int | None, dry_run: bool) -> None:
    """Remove stages that no kept run refers to, and abandoned work directories."""
    from nnopt.core.store import collect_garbage

    rep = collect_garbage(_store(store_dir), keep_last, dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(rep.invocations_removed)} invocations ({len(rep.runs_removed)} runs), "
               f"{len(rep.stages_removed)} stages, {rep.workdirs_removed} work directories "
               f"({rep.bytes_freed / 1e6:.1f} MB)")


@main.command()
@click.argument("refs", nargs=-1, metavar="[REF]...")
@store_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="where to write the report (default: in the store)")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html", show_default=True,
              help="one self-contained HTML file, or Markdown with its PNGs beside it")
def report(refs: tuple[str, ...], store_dir: str | None, output: str | None, fmt: str) -> None:
    """Write a report of runs: a run id, a sweep (invocation) id, a pipeline name or FILE
    (its latest invocation), or latest (the default); several REFs are compared."""
    from nnopt.core.report import write_report

    click.echo(write_report(_store(store_dir), list(refs) or ["latest"], Path(output) if output else None, fmt))


def entry() -> None:
    """The ``nnopt`` command (console script and ``python -m nnopt``)."""
    from nnopt.core.gc_policy import hold_during_startup

    hold_during_startup()  # the imports' objects live as long as the process: no point walking them
    try:
        main()
    except SystemExit as done:
        if _record_rank0_exit(done.code):
            raise SystemExit(0) from None  # the launcher exits with it: no "ChildFailedError" report from torchrun
        raise


def _record_rank0_exit(code: Any) -> bool:
    """Under ``run --nproc``: rank 0 tells the launcher its exit status (True: told)."""
    path = os.environ.get("NNOPT_RANK0_EXIT_FILE")  # distributed.EXIT_FILE_ENV, without importing it
    if not path or os.environ.get("RANK", "0") != "0":
        return False
    with open(path, "w") as f:
        f.write(str(code if isinstance(code, int) else (0 if code is None else 1)))
    return True


if __name__ == "__main__":  # pragma: no cover
    entry()
