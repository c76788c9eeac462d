"""Tests of the example external spectrometer driver (stdlib unittest; run by ./scripts/test):
the absorbance it computes from raw counts, and its JSON-RPC behaviour, in process and as the
agent runs it (a subprocess on pipes)."""

import json
import subprocess
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import spectrometer as sp  # noqa: E402

DRIVER = Path(__file__).parent / "spectrometer.py"


def rpc(driver, method, params=None, rid=1):
    return driver.respond(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}))


class Absorbance(unittest.TestCase):
    def test_absorbance_is_recovered_from_raw_counts(self):
        backend = sp.SyntheticBackend(seed=3)
        spec = sp.Spectrometer(backend)
        spec.reference(100.0, 10)  # blank in the cell
        backend.sample = True
        a = spec.acquire(100.0, 10)
        errs = [abs(x - backend.true_absorbance(w)) for w, x in zip(spec.axis, a)]
        self.assertLess(max(errs), 0.01, "absorbance off by more than 0.01 somewhere")
        peak = max(range(len(a)), key=lambda i: a[i])
        self.assertAlmostEqual(spec.axis[peak], 515.0, delta=2.0)

    def test_a_reference_at_another_integration_time_is_rescaled(self):
        backend = sp.SyntheticBackend(seed=4)
        spec = sp.Spectrometer(backend)
        spec.reference(50.0, 10)
        backend.sample = True
        a = spec.acquire(200.0, 10)
        errs = [abs(x - backend.true_absorbance(w)) for w, x in zip(spec.axis, a)]
        self.assertLess(max(errs), 0.01)

    def test_dark_pixels_and_saturation_are_clipped_not_infinite(self):
        a = sp.absorbance([1000.0, 1000.5, 900.0], [1000.0, 1000.0, 1000.0], [1000.0, 31000.0, 31000.0])
        self.assertEqual(a[0], 0.0)  # no light in the reference: no absorbance
        self.assertLessEqual(a[1], sp.MAX_ABSORBANCE)
        self.assertEqual(a[2], sp.MAX_ABSORBANCE)  # below dark: the floor, not -log of a negative


class SavedReference(unittest.TestCase):
    def test_a_restarted_driver_reuses_the_saved_reference_not_the_sample_in_the_cell(self):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            path = str(Path(d) / "reference.json")
            backend = sp.SyntheticBackend(seed=5)
            first = sp.Driver(sp.Spectrometer(backend), path)
            rpc(first, "reference")  # blank in the cell, saved
            backend.sample = True
            before = rpc(first, "acquire")["result"]["max_absorbance"]
            # the driver restarts while the sample is in the cell
            spec = sp.Spectrometer(backend)
            self.assertTrue(spec.load(path))
            after = sp.Driver(spec, path)
            again = rpc(after, "acquire")["result"]["max_absorbance"]
            self.assertGreater(before, 0.3)
            self.assertAlmostEqual(again, before, delta=0.01)
            # a reference taken now (sample in the cell) would have hidden it
            fresh = sp.Spectrometer(backend)
            fresh.reference(100.0, 10)
            self.assertLess(max(fresh.acquire(100.0, 10)), 0.05)

    def test_a_corrupt_or_foreign_reference_file_is_ignored(self):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "reference.json"
            path.write_text("{not json")
            self.assertFalse(sp.Spectrometer(sp.SyntheticBackend()).load(str(path)))
            path.write_text(json.dumps({"axis": [1.0, 2.0], "reference": {}, "dark": {}}))
            self.assertFalse(sp.Spectrometer(sp.SyntheticBackend()).load(str(path)))


class JsonRpc(unittest.TestCase):
    def setUp(self):
        self.driver = sp.Driver(sp.Spectrometer(sp.SyntheticBackend()))

    def test_describe_declares_acquire_with_its_ranges_and_yield(self):
        r = rpc(self.driver, "describe")["result"]
        self.assertEqual(r["protocol"], sp.PROTOCOL)
        acquire = next(m for m in r["methods"] if m["name"] == "acquire")
        self.assertEqual(acquire["yields"], ["absorption_spectrum"])
        names = {p["name"]: p for p in acquire["params"]}
        self.assertEqual((names["integration"]["min"], names["integration"]["max"]), (1.0, 10000.0))

    def test_acquire_without_a_reference_is_refused_with_a_reason(self):
        e = rpc(self.driver, "acquire")["error"]
        self.assertEqual(e["code"], sp.DEVICE_REFUSED)
        self.assertIn("reference", e["message"])

    def test_acquire_returns_a_measurement_in_the_agent_schema(self):
        rpc(self.driver, "reference")
        r = rpc(self.driver, "acquire", {"integration": 50, "averages": 2, "from": 400, "to": 550}, rid=7)
        self.assertEqual(r["id"], 7)
        (m,) = r["result"]["measurements"]
        self.assertEqual(m["kind"], "absorption_spectrum")
        self.assertEqual(len(m["wavelength_nm"]), len(m["absorbance"]))
        self.assertEqual(m["window_nm"], [400.0, 550.0])
        self.assertEqual((m["integration_ms"], m["averages"]), (50.0, 2))

    def test_bad_requests_get_json_rpc_errors(self):
        self.assertEqual(rpc(self.driver, "explode")["error"]["code"], sp.METHOD_NOT_FOUND)
        self.assertEqual(rpc(self.driver, "dark", {"integration": 0})["error"]["code"], sp.INVALID_PARAMS)
        self.assertEqual(rpc(self.driver, "dark", {"averages": "many"})["error"]["code"], sp.INVALID_PARAMS)
        self.assertEqual(self.driver.respond("{not json")["error"]["code"], -32700)
        self.assertEqual(self.driver.respond("[1, 2]")["error"]["code"], -32600)
        # a notification gets no reply
        self.assertIsNone(self.driver.respond(json.dumps({"jsonrpc": "2.0", "method": "dark"})))


class AsAProcess(unittest.TestCase):
    def test_the_driver_answers_on_stdio_and_logs_on_stderr(self):
        p = subprocess.Popen(
            [sys.executable, str(DRIVER), "--backend", "synthetic", "--reference-at-start"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            for i, m in enumerate(["describe", "acquire", "safe_state"], start=1):
                p.stdin.write(json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": {}}) + "\n")
                p.stdin.flush()
                reply = json.loads(p.stdout.readline())
                self.assertEqual(reply["id"], i)
                self.assertIn("result", reply, reply)
        finally:
            p.stdin.close()
            self.assertEqual(p.wait(timeout=10), 0)
            err = p.stderr.read()
            p.stdout.close()
            p.stderr.close()
        self.assertIn("driver ready", err)


if __name__ == "__main__":
    unittest.main()
