"""lif_sbi.quiet: TensorFlow's start-up lines are dropped from fd 2, everything else passes through."""

import subprocess
import sys

SCRIPT = r"""
import os, sys
from lif_sbi import quiet
with quiet.startup_lines():
    os.write(2, b"I0000 00:00:1795650710.894108    2158 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"E0000 00:00:1795650713.006837    2158 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
    os.write(2, b"E0000 00:00:1795650713.006837    2158 something.cc:1] a real error\n")
    print("a Python warning", file=sys.stderr)
    os.write(2, b"plain line\n")
print("stdout untouched")
"""


def test_startup_noise_is_dropped_and_the_rest_kept_in_order():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stdout untouched\n"
    assert proc.stderr.splitlines() == [
        "E0000 00:00:1795650713.006837    2158 something.cc:1] a real error",
        "a Python warning",
        "plain line",
    ]


def test_an_exception_inside_still_restores_stderr_and_shows_what_was_written():
    script = "import os\nfrom lif_sbi import quiet\ntry:\n    with quiet.startup_lines():\n        os.write(2, b'before\\n')\n        raise RuntimeError('x')\nexcept RuntimeError:\n    pass\nos.write(2, b'after\\n')\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stderr.splitlines() == ["before", "after"]


TQDM_SCRIPT = r"""
import json, torch  # importing torch imports tqdm (torch.hub), before quiet.libraries() sets TQDM_DISABLE
import tqdm.auto, tqdm
from lif_sbi import quiet
quiet.libraries()
quiet.libraries()  # twice: no second wrapping
bayesflow_style = tqdm.auto.tqdm(range(3), desc="Sampling")
own = tqdm.tqdm(range(3), desc="ours", disable=False)
print(json.dumps({"bayesflow_style": bayesflow_style.disable, "own": own.disable}))
"""


def test_bayesflow_bars_are_off_even_when_tqdm_was_imported_first():
    """BayesFlow draws a tqdm bar per sample() call; quiet.libraries() turns them off with
    TQDM_DISABLE=1, also where tqdm was imported (by torch) before the variable was set, as in
    `python -m lif_sbi.infer`; a bar that passes disable=False still shows, and a user's own
    TQDM_DISABLE is respected (empty: bars on; tqdm reads any other text, "0" too, as true)."""
    import json
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    proc = subprocess.run([sys.executable, "-c", TQDM_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"bayesflow_style": True, "own": False}
    proc = subprocess.run([sys.executable, "-c", TQDM_SCRIPT], capture_output=True, text=True, timeout=120, env=env | {"TQDM_DISABLE": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"bayesflow_style": False, "own": False}
