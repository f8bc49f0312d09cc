"""The main suite's comparison helpers (tests/conftest.py), shared with the CUDA
suite; loaded by path because both folders have a module named conftest."""
import importlib.util
import os
import sys

_path = os.path.join(os.path.dirname(__file__), "..", "conftest.py")
_spec = importlib.util.spec_from_file_location("numbaabn_tests_conftest", _path)
_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _mod
_spec.loader.exec_module(_mod)

assert_close = _mod.assert_close
assert_f16_forward = _mod.assert_f16_forward
assert_sums_close = _mod.assert_sums_close
rel_err = _mod.rel_err
