#!/usr/bin/env python3
"""MAOSIC external driver: a CCD absorption spectrometer behind JSON-RPC 2.0 over stdio.

The agent starts this program (lab TOML: ``driver = "external"``, ``command = [...]``), asks it
to ``describe`` itself, then calls its methods; one JSON object per line on stdin and stdout,
log lines on stderr. The protocol is in docs/external-drivers.md.

The driver does what a vendor SDK leaves to the user: it takes a dark and a reference (blank)
spectrum and turns raw detector counts into absorbance, ``A = -log10((S - D) / (R - D))``.

Backends (``--backend``):

``seabreeze``
    An Ocean Optics / Ocean Insight spectrometer through python-seabreeze (not needed for the
    other backends). There is no lamp control: take the dark with the lamp blocked and the
    reference with the blank in the cell (methods ``dark`` and ``reference``).
``bench``
    The virtual lab's optical bench (lamp, flow cell, 2,048-pixel CCD) on the serial port
    ``--port`` (the agent passes the twin's pseudo-terminal as ``{port}``): raw counts over a line
    protocol, lamp shutter under software control.
``synthetic``
    A self-contained fake with a fixed sample (an exciton peak at 515 nm), for tests without a
    lab.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import termios
import tty
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

PROTOCOL = 1

# JSON-RPC error codes the agent maps to its own errors
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
DEVICE_REFUSED = -32000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# backends: raw counts
# ---------------------------------------------------------------------------------------------


class Backend:
    """What the driver needs from a spectrometer: its axis and raw counts."""

    model = "unknown"
    lamp_control = False

    def wavelengths(self) -> List[float]:
        raise NotImplementedError

    def intensities(self, integration_ms: float, averages: int) -> List[float]:
        raise NotImplementedError

    def lamp(self, on: bool) -> None:
        """Open or close the light source's shutter (backends with `lamp_control`)."""


class SyntheticBackend(Backend):
    """A fake spectrometer with a fixed sample in the cell (no lab needed)."""

    model = "synthetic fake spectrometer (1024 px, 300-800 nm)"
    lamp_control = True

    def __init__(self, seed: int = 1, sample: bool = False) -> None:
        self._rng = random.Random(seed)
        self._lamp = True
        self.sample = sample
        self._axis = [300.0 + 500.0 * i / 1023 for i in range(1024)]

    def wavelengths(self) -> List[float]:
        return list(self._axis)

    @staticmethod
    def true_absorbance(wl: float) -> float:
        return 0.4 * math.exp(-((wl - 515.0) ** 2) / (2 * 8.0**2)) + 0.05 * (400.0 / wl) ** 4

    def intensities(self, integration_ms: float, averages: int) -> List[float]:
        out = []
        for wl in self._axis:
            lamp = (5000.0 + 30000.0 * math.exp(-((wl - 600.0) ** 2) / (2 * 200.0**2))) * (
                integration_ms / 100.0
            )
            light = lamp * 10 ** (-self.true_absorbance(wl)) if self.sample else lamp
            light = light if self._lamp else 0.0
            noise = self._rng.gauss(0.0, 3.0) / math.sqrt(averages)
            out.append(1000.0 + light + noise)
        return out

    def lamp(self, on: bool) -> None:
        self._lamp = on


class BenchBackend(Backend):
    """The virtual lab's optical bench on a serial line (pseudo-terminal)."""

    lamp_control = True

    def __init__(self, port: str) -> None:
        self._fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._fd, termios.TCSANOW)
        termios.tcflush(self._fd, termios.TCIOFLUSH)
        self._buf = b""
        ident = self._ask("ID?").split()
        if not ident or ident[0] != "MAOSIC-BENCH":
            raise RuntimeError(f"{port}: not an optical bench: {ident!r}")
        self.model = f"virtual optical bench on {port} ({ident[1]} px)"
        self._axis = [float(x) for x in self._ask("WL?").split()]

    def _ask(self, line: str) -> str:
        os.write(self._fd, (line + "\n").encode())
        while b"\n" not in self._buf:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise RuntimeError("optical bench closed the line")
            self._buf += chunk
        reply, _, self._buf = self._buf.partition(b"\n")
        text = reply.decode(errors="replace").strip()
        if text.startswith("ERR"):
            raise RpcError(DEVICE_REFUSED, f"optical bench: {text}")
        return text

    def wavelengths(self) -> List[float]:
        return list(self._axis)

    def intensities(self, integration_ms: float, averages: int) -> List[float]:
        reply = self._ask(f"ACQ {integration_ms:g} {averages}").split()
        if not reply or reply[0] != "DATA" or len(reply) - 1 != len(self._axis):
            raise RpcError(DEVICE_REFUSED, "optical bench: malformed data line")
        return [float(x) for x in reply[1:]]

    def lamp(self, on: bool) -> None:
        self._ask("LAMP 1" if on else "LAMP 0")


class SeabreezeBackend(Backend):  # pragma: no cover - needs hardware
    """An Ocean Optics spectrometer through python-seabreeze."""

    def __init__(self) -> None:
        from seabreeze.spectrometers import Spectrometer  # type: ignore[import-not-found]

        self._spec = Spectrometer.from_first_available()
        self.model = f"{self._spec.model} (serial {self._spec.serial_number}) via seabreeze"
        self._axis = [float(x) for x in self._spec.wavelengths()]

    def wavelengths(self) -> List[float]:
        return list(self._axis)

    def intensities(self, integration_ms: float, averages: int) -> List[float]:
        self._spec.integration_time_micros(int(integration_ms * 1000))
        acc = [0.0] * len(self._axis)
        for _ in range(averages):
            for i, c in enumerate(self._spec.intensities()):
                acc[i] += float(c)
        return [a / averages for a in acc]


# ---------------------------------------------------------------------------------------------
# the instrument: dark, reference, absorbance
# ---------------------------------------------------------------------------------------------

# smallest net reference counts a pixel needs to give an absorbance
MIN_NET_REFERENCE = 20.0
# absorbance ceiling (transmission floor 1e-4)
MAX_ABSORBANCE = 4.0


def absorbance(sample: Sequence[float], dark: Sequence[float], reference: Sequence[float]) -> List[float]:
    """A = -log10((S - D) / (R - D)), clipped to [-0.5, 4]; 0 where the reference is too weak."""
    out = []
    for s, d, r in zip(sample, dark, reference):
        net_r = r - d
        if net_r < MIN_NET_REFERENCE:
            out.append(0.0)
            continue
        t = max((s - d) / net_r, 10**-MAX_ABSORBANCE)
        out.append(min(max(-math.log10(t), -0.5), MAX_ABSORBANCE))
    return out


class Spectrometer:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.axis = backend.wavelengths()
        # integration ms -> dark counts; reference as (integration ms, net counts)
        self._dark: Dict[float, List[float]] = {}
        self._reference: Optional[Tuple[float, List[float]]] = None
        # seconds of exposure so far: what the instrument's time is spent on
        self.exposed_s = 0.0

    def _take(self, integration: float, averages: int, lamp: bool) -> List[float]:
        if self.backend.lamp_control:
            self.backend.lamp(lamp)
        counts = self.backend.intensities(integration, averages)
        self.exposed_s += integration * averages / 1000.0
        if self.backend.lamp_control and not lamp:
            self.backend.lamp(True)
        return counts

    def dark(self, integration: float, averages: int) -> List[float]:
        if not self.backend.lamp_control:
            log("dark: no lamp control; the light path must be blocked now")
        d = self._take(integration, averages, lamp=False)
        self._dark[integration] = d
        return d

    def _dark_at(self, integration: float, averages: int) -> List[float]:
        d = self._dark.get(integration)
        if d is None:
            if not self.backend.lamp_control:
                raise RpcError(
                    DEVICE_REFUSED,
                    f"no dark spectrum at {integration:g} ms: block the light and call dark",
                )
            d = self.dark(integration, averages)
        return d

    def reference(self, integration: float, averages: int) -> List[float]:
        d = self._dark_at(integration, averages)
        r = self._take(integration, averages, lamp=True)
        net = [x - y for x, y in zip(r, d)]
        self._reference = (integration, net)
        return r

    def save(self, path: str) -> None:
        """Keep the reference and darks in `path` (written atomically), so that a restarted
        driver does not take a new reference with a sample in the cell."""
        if self._reference is None:
            return
        data = {
            "axis": self.axis,
            "reference": {"integration_ms": self._reference[0], "net_counts": self._reference[1]},
            "dark": {str(k): v for k, v in self._dark.items()},
        }
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    def load(self, path: str) -> bool:
        """Load a saved reference; False when there is none or it is for another axis."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data["axis"] != self.axis:
                log(f"{path}: saved for another wavelength axis; ignored")
                return False
            ref = data["reference"]
            self._reference = (float(ref["integration_ms"]), [float(x) for x in ref["net_counts"]])
            self._dark = {float(k): [float(x) for x in v] for k, v in data["dark"].items()}
            return True
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError) as e:
            log(f"{path}: unreadable saved reference ({e}); ignored")
            return False

    def acquire(self, integration: float, averages: int) -> List[float]:
        if self._reference is None:
            raise RpcError(
                DEVICE_REFUSED, "no reference spectrum: put the blank in the cell and call reference"
            )
        d = self._dark_at(integration, averages)
        s = self._take(integration, averages, lamp=True)
        t_ref, net = self._reference
        scale = integration / t_ref
        ref = [x * scale + y for x, y in zip(net, d)]
        return absorbance(s, d, ref)


# ---------------------------------------------------------------------------------------------
# JSON-RPC
# ---------------------------------------------------------------------------------------------


def param(name: str, unit: str, lo: float, hi: float, default: float, res: Optional[float]) -> Dict[str, Any]:
    p: Dict[str, Any] = {"name": name, "unit": unit, "min": lo, "max": hi, "default": default}
    if res is not None:
        p["resolution"] = res
    return p


def describe(model: str) -> Dict[str, Any]:
    timing = [
        param("integration", "ms", 1.0, 10000.0, 100.0, 1.0),
        param("averages", "", 1.0, 100.0, 10.0, 1.0),
    ]
    return {
        "protocol": PROTOCOL,
        "model": model,
        "methods": [
            {
                "name": "acquire",
                "description": "Record an absorption spectrum of the stream in the flow cell",
                "duration_ms": 5000,
                "params": [
                    param("from", "nm", 200.0, 1000.0, 350.0, 1.0),
                    param("to", "nm", 200.0, 1000.0, 600.0, 1.0),
                ]
                + timing,
                "yields": ["absorption_spectrum"],
            },
            {
                "name": "reference",
                "description": "Record the reference (blank) spectrum with the solvent in the cell",
                "duration_ms": 5000,
                "params": timing,
            },
            {
                "name": "dark",
                "description": "Record the dark spectrum (light source shutter closed)",
                "duration_ms": 5000,
                "params": timing,
            },
        ],
    }


class Driver:
    def __init__(self, spectrometer: Spectrometer, reference_file: Optional[str] = None) -> None:
        self.spec = spectrometer
        self.reference_file = reference_file
        self.calls = 0

    def handle(self, method: str, params: Dict[str, Any]) -> Any:
        if method == "describe":
            return describe(self.spec.backend.model)
        if method == "safe_state":
            if self.spec.backend.lamp_control:
                self.spec.backend.lamp(False)
            return {"lamp": "off"}
        handlers: Dict[str, Callable[[Dict[str, Any]], Any]] = {
            "acquire": self._acquire,
            "reference": self._reference,
            "dark": self._dark,
        }
        h = handlers.get(method)
        if h is None:
            raise RpcError(METHOD_NOT_FOUND, f"unknown method {method}")
        self.calls += 1
        before = self.spec.exposed_s
        result = h(params)
        # how long the instrument was busy: an agent on a discrete-event lab clock (the virtual
        # lab) counts it as lab time; on real hardware it is informational
        result["lab_duration_s"] = self.spec.exposed_s - before
        return result

    @staticmethod
    def _timing(params: Dict[str, Any]) -> Tuple[float, int]:
        try:
            integration = float(params.get("integration", 100.0))
            averages = int(round(float(params.get("averages", 10.0))))
        except (TypeError, ValueError) as e:
            raise RpcError(INVALID_PARAMS, f"integration/averages: {e}") from e
        if not (1.0 <= integration <= 10000.0 and 1 <= averages <= 100):
            raise RpcError(INVALID_PARAMS, "integration 1-10000 ms, averages 1-100")
        return integration, averages

    def _acquire(self, params: Dict[str, Any]) -> Dict[str, Any]:
        integration, averages = self._timing(params)
        window = [float(params.get("from", 350.0)), float(params.get("to", 600.0))]
        a = self.spec.acquire(integration, averages)
        return {
            "pixels": len(a),
            "max_absorbance": max(a),
            "measurements": [
                {
                    "kind": "absorption_spectrum",
                    "wavelength_nm": self.spec.axis,
                    "absorbance": a,
                    "integration_ms": integration,
                    "averages": averages,
                    "window_nm": window,
                }
            ],
        }

    def _reference(self, params: Dict[str, Any]) -> Dict[str, Any]:
        integration, averages = self._timing(params)
        r = self.spec.reference(integration, averages)
        if self.reference_file:
            self.spec.save(self.reference_file)
        return {"pixels": len(r), "max_counts": max(r)}

    def _dark(self, params: Dict[str, Any]) -> Dict[str, Any]:
        integration, averages = self._timing(params)
        d = self.spec.dark(integration, averages)
        return {"pixels": len(d), "mean_counts": sum(d) / len(d)}

    def respond(self, line: str) -> Optional[Dict[str, Any]]:
        """The reply to one request line (None for a notification)."""
        try:
            req = json.loads(line)
        except json.JSONDecodeError as e:
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": str(e)}}
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "not a request"}}
        rid = req.get("id")
        params = req.get("params") or {}
        try:
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            result = self.handle(req["method"], params)
        except RpcError as e:
            reply: Dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "error": {"code": e.code, "message": e.message}}
        except Exception as e:  # a backend failure is the device refusing, not a driver crash
            reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": DEVICE_REFUSED, "message": f"{type(e).__name__}: {e}"}}
        else:
            reply = {"jsonrpc": "2.0", "id": rid, "result": result}
        return None if rid is None else reply


def make_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "bench":
        if not args.port:
            raise SystemExit("--backend bench needs --port")
        return BenchBackend(args.port)
    if args.backend == "seabreeze":  # pragma: no cover - needs hardware
        return SeabreezeBackend()
    return SyntheticBackend(seed=args.seed, sample=args.synthetic_sample)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["seabreeze", "bench", "synthetic"], default="synthetic")
    ap.add_argument("--port", help="serial port of the optical bench (backend bench)")
    ap.add_argument("--seed", type=int, default=1, help="noise seed (backend synthetic)")
    ap.add_argument("--synthetic-sample", action="store_true", help="a sample in the synthetic cell")
    ap.add_argument(
        "--reference-at-start",
        action="store_true",
        help="take the dark and reference spectra at start (the cell must hold the blank), "
        "unless --reference-file already holds one",
    )
    ap.add_argument(
        "--reference-file",
        help="keep the reference here: loaded at start if present, written when one is taken "
        "(a driver restarted mid-campaign must not take a reference with a sample in the cell)",
    )
    args = ap.parse_args(argv)
    backend = make_backend(args)
    spec = Spectrometer(backend)
    if args.reference_file and spec.load(args.reference_file):
        log(f"reference loaded from {args.reference_file}")
    elif args.reference_at_start:
        spec.reference(100.0, 10)
        if args.reference_file:
            spec.save(args.reference_file)
        log(f"reference taken at start ({backend.model})")
    driver = Driver(spec, args.reference_file)
    log(f"spectrometer driver ready: {backend.model}")
    for line in sys.stdin:
        if not line.strip():
            continue
        reply = driver.respond(line)
        if reply is not None:
            sys.stdout.write(json.dumps(reply, separators=(",", ":")) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
