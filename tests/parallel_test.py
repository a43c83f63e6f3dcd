"""Data parallelism: sharded equals single-device, and a real 2-process run on localhost."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from srlm import cli
from srlm import runs
from srlm import parallel
from srlm.data import pipeline
from srlm.errors import ConfigError

from helpers import REPO, copy_workdir, journaled_batches, run_cli_process


def _env(**extra) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  env.update(extra)
  return env


def test_eight_sharded_devices_compute_what_one_device_does(tfds_dir):
  """Two SRI train steps (params replicated, 16 sentences as 2 per device) and the whole
  evaluation (log-det NLL, KL, REC, AU, MI) on 8 forced CPU devices against one device."""
  process = subprocess.run(
      [sys.executable, str(REPO / "tests" / "multidevice_check.py"), tfds_dir],
      env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"), capture_output=True,
      text=True, timeout=600, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  diffs = json.loads(process.stdout.strip().splitlines()[-1])
  # The comparison is between really sharded and unsharded computations.
  assert diffs["batch_devices"] == 8 and diffs["batch_shard_rows"] == 2
  assert diffs["params_replicated"]
  assert diffs["initial_params"] == 0.0
  # Same keys and batch: only the order of float sums may differ (measured: 5e-8 and 0).
  for step in (1, 2):
    assert diffs[f"step{step}_loss"] <= 1e-5
    assert diffs[f"step{step}_params"] <= 1e-6
  for key in ("nll", "kl", "rec", "mi"):
    assert diffs[f"eval_{key}"] <= 1e-4 * max(1.0, abs(diffs["eval_nll_value"]))
  assert diffs["eval_au_equal"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir: str, tfds_dir: str, max_steps: int, num_processes: int,
           log_every: int = 1) -> list[subprocess.Popen]:
  command = [sys.executable, "-m", "srlm.main", "--flagfile=launch/ptb_tiny.flags",
             f"--workdir={workdir}", f"--config.data.dir={tfds_dir}",
             "--config.data.max_train_sentences=256", "--config.data.max_eval_sentences=32",
             f"--config.train.max_steps={max_steps}", f"--config.train.log_every_steps={log_every}"]
  port = _free_port()
  return [subprocess.Popen(
      command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(SRLM_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(i))
      if num_processes > 1 else _env()) for i in range(num_processes)]


def _communicate(processes: list[subprocess.Popen], timeout: float) -> list[str]:
  """Every process's output; on a hang, all are killed and their logs shown, since the process
  that hangs is often waiting for one that went elsewhere."""
  deadline = time.time() + timeout
  try:
    return [p.communicate(timeout=max(1.0, deadline - time.time()))[0] for p in processes]
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
    logs = [p.communicate()[0] for p in processes]
    pytest.fail(f"the processes did not finish in {timeout:.0f} s:\n" + "\n".join(
        f"process {i}:\n{log[-3000:]}" for i, log in enumerate(logs)))


def _train(workdir: str, tfds_dir: str, max_steps: int, num_processes: int,
           expected_code: int = 0, signal_process_at_step: tuple[int, int] | None = None,
           log_every: int = 1) -> list[str]:
  """Runs the tiny config in num_processes processes; with signal_process_at_step=(p, s),
  process p alone gets SIGTERM once step s is logged."""
  processes = _start(workdir, tfds_dir, max_steps, num_processes, log_every)
  if signal_process_at_step:
    target, at_step = signal_process_at_step
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and any(
        json.loads(line)["step"] >= at_step for line in open(metrics) if '"train"' in line)):
      assert time.time() < deadline and all(p.poll() is None for p in processes)
      time.sleep(0.05)
    processes[target].send_signal(signal.SIGTERM)
  logs = _communicate(processes, timeout=600)
  # On a failure every process's log is shown: the process that fails is often not the cause.
  assert [p.returncode for p in processes] == [expected_code] * num_processes, "\n".join(
      f"process {i}, exit code {p.returncode}:\n{log[-3000:]}"
      for i, (p, log) in enumerate(zip(processes, logs)))
  return logs


def test_two_processes_train_checkpoint_resume_and_match_one_process(tfds_dir, tmp_path):
  config = cli.config_from_flags(["--flagfile=launch/ptb_tiny.flags",
                                  f"--config.data.dir={tfds_dir}",
                                  "--config.data.max_train_sentences=256",
                                  "--config.data.max_eval_sentences=32"])
  pipeline.load_corpus(config.data)  # prepared once, before the processes start
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  first = _train(two, tfds_dir, 3, num_processes=2)
  assert "Process 0 of 2; 1 local and 2 global devices" in first[0]
  resumed = _train(two, tfds_dir, 5, num_processes=2)
  assert "Resumed from" in resumed[0] and "at step 3" in resumed[0]
  # Programs read back from the persistent cache hang in a CPU job's collectives (JAX 0.12):
  # the resumed run would have found the first run's there.
  assert "Compilation cache off" in resumed[0]
  # Only process 0 logs at INFO and writes metrics.
  assert "Resumed from" not in resumed[1]
  with open(os.path.join(two, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if '"train"' in line]
  assert steps == [1, 2, 3, 4, 5]
  # SIGTERM reaches one process only (clusters signal processes at different times): both
  # agree on the step at the next log step (every 2 steps here), save it together and stop.
  _train(two, tfds_dir, 200, num_processes=2, expected_code=128 + signal.SIGTERM,
         signal_process_at_step=(1, 6), log_every=2)
  steps_saved = sorted(int(d) for d in os.listdir(os.path.join(two, "checkpoints"))
                       if d.isdigit())
  with open(os.path.join(two, "metrics.jsonl")) as f:
    logged = [json.loads(line)["step"] for line in f if '"train"' in line]
  stop_step = steps_saved[-1]
  assert 6 <= stop_step < 200 and stop_step % 2 == 0, (steps_saved, logged)
  assert logged == [1, 2, 3, 4, 5] + list(range(6, stop_step + 1, 2)), (steps_saved, logged)
  _train(one, tfds_dir, stop_step, num_processes=1)
  two_run, one_run = (runs.restore_trained(config, w) for w in (two, one))
  assert two_run.step == one_run.step == stop_step
  for a, b in zip(jax.tree.leaves(two_run.params), jax.tree.leaves(one_run.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_sigterm_to_one_process_stops_a_two_process_eval_and_the_journal_resumes(
    trained_workdir, tmp_path):
  """A cluster signals one process of a job: every process of a 2-process AIS evaluation exits
  143 with one line (the others say the signal came to another process), and the finished
  batches, journaled by process 0, are reused by the same command run again."""
  workdir = copy_workdir(trained_workdir("sri"), tmp_path)
  flags = ["--mode=eval", f"--workdir={workdir}", "--config.eval.batch_size=2",
           "--config.eval.estimator=ais", "--config.eval.ais_steps=300"]
  port = _free_port()
  processes = [subprocess.Popen(
      [sys.executable, "-m", "srlm.main", *flags], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True,
      env=_env(SRLM_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))) for i in range(2)]
  deadline = time.time() + 300
  while journaled_batches(workdir) < 1:  # 4 batches of 2 sentences; a few seconds each
    assert time.time() < deadline and all(p.poll() is None for p in processes)
    time.sleep(0.02)
  processes[1].send_signal(signal.SIGTERM)
  logs = _communicate(processes, timeout=120)
  assert [p.returncode for p in processes] == [128 + signal.SIGTERM] * 2, "\n".join(logs)
  said = [[line for line in log.splitlines() if line.startswith("srlm:")] for log in logs]
  assert said == [
      ["srlm: --mode=eval stopped by SIGTERM (sent to another process of the job): the finished "
       "batches are journaled in the workdir; run the same command again to resume."],
      ["srlm: --mode=eval stopped by SIGTERM: the finished batches are journaled in the "
       "workdir; run the same command again to resume."]], "\n".join(logs)
  assert not any("Traceback" in log for log in logs)
  assert not os.path.exists(os.path.join(workdir, "eval_test_ais.json"))
  resumed = run_cli_process(*flags)  # one process: the journal holds no device layout
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "batches reused from" in resumed.stderr, resumed.stderr[-3000:]


def test_random_batches_are_a_function_of_their_entropy(tiny_config):
  """The aggressive VAE's inner batches and fit_step_sizes' sub-batches: the same entropy (a
  resumed run's) gives the same batches, another entropy others, all from the split's plan."""
  split = pipeline.load_corpus(tiny_config.data).splits["train"]
  mesh = parallel.make_mesh(1)
  draw = lambda entropy: [next(stream)["inputs"] for stream in
                          [parallel.random_batches(split, (22, 84), 8, mesh, entropy)]
                          for _ in range(6)]
  first, again, other = draw((0, 5, 1)), draw((0, 5, 1)), draw((0, 6, 1))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(first, other))
  assert all(batch.shape[0] == 8 and batch.shape[1] in (21, 83) for batch in first)


def test_batch_sizes_must_split_evenly_over_devices():
  mesh = jax.sharding.AbstractMesh((4,), (parallel.DATA_AXIS,))
  parallel.check_batch_size(8, mesh, "data.batch_size")
  with pytest.raises(ConfigError, match=r"--config.eval.batch_size=6 must be a multiple of "
                     r"the number of devices \(4\)"):
    parallel.check_batch_size(6, mesh, "eval.batch_size")
  with pytest.raises(ConfigError, match="more than"):
    parallel.make_mesh(jax.device_count() + 1)


def test_distributed_start_is_asked_by_flag_or_environment(monkeypatch):
  monkeypatch.delenv(parallel.DISTRIBUTED_ENV, raising=False)
  assert not parallel.distributed_requested(False)
  assert parallel.distributed_requested(True)
  monkeypatch.setenv(parallel.DISTRIBUTED_ENV, "1")
  assert parallel.distributed_requested(False)
  monkeypatch.setenv(parallel.DISTRIBUTED_ENV, "0")
  assert not parallel.distributed_requested(False)


@pytest.mark.parametrize("script", ["single_gpu.sh", "slurm_gpu.sbatch", "tpu_vm.sh"])
def test_launchers_parse_and_call_the_entry_point(script):
  path = REPO / "launch" / script
  assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
  text = path.read_text()
  assert "-m srlm.main --flagfile=" in text
  # Run without arguments, each names its usage instead of starting anything.
  process = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=False,
                           env=_env(PYTHON="false"))
  assert process.returncode != 0 and "usage:" in process.stderr


def test_the_gpu_launcher_names_the_install_line_without_a_gpu(tmp_path):
  """On a CPU-only install, launch/single_gpu.sh stops before training, exit 2, and says how
  to install the CUDA extra."""
  process = subprocess.run(["bash", str(REPO / "launch" / "single_gpu.sh"),
                            "launch/ptb_tiny.flags", str(tmp_path / "run")], cwd=REPO,
                           capture_output=True, text=True, check=False,
                           env=_env(PYTHON=sys.executable, JAX_PLATFORMS="cpu"))
  assert process.returncode == 2, process.stderr[-2000:]
  assert ".[cuda13]" in process.stderr and "Traceback" not in process.stderr
  assert not (tmp_path / "run").exists()
