"""OpenQASM 2.0 reader and writer.

The reader takes what qiskit's `qasm2.load(..., custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)` takes (the
form `qasm2.dumps` writes) and turns the unitary part into a `Circuit`:

* a tokenizer (`//` comments; statements may span lines and share them) and a recursive-descent parser;
* `OPENQASM 2.0;` optional, but only as a file's first statement; several `qreg`s, concatenated in declaration order
  (the first register's qubit 0 is circuit qubit 0); `creg`;
* `include "qelib1.inc";` is built in: qiskit's legacy qelib1 gate set (circuit.GATE_SPECS). As in qiskit, `U`, `CX`
  and the gates qiskit marks built-in (u0 u p sx sxdg swap cswap crx cry cp csx cu rxx rzz rccx rc3x c3x c3sqrtx c4x)
  need no include, the others (h, cx, rz, ...) do. Other includes are read relative to the including file's
  directory (`include_dir` for text given to `parse_qasm`), recursively, refusing cycles;
* `gate name(params) qubits { body }`: the body's gate calls (of U, CX and gates defined before) with parameter
  expressions of the gate's parameters; a call is expanded into primitive Gates. A `gate` or `opaque` named like a
  qelib1 gate with its signature stands for that gate (qiskit's legacy loader does the same: `qasm2.dumps` writes
  e.g. `gate rzz(param0) q0,q1 { ... }`), so its matrix is qiskit's, global phase included;
* `opaque` declarations are accepted, applying one is an error (there is no definition to simulate), except
  `delay(t) q`, which is the identity, as in qiskit;
* register broadcasting: `h q;` applies H to every qubit of q; registers given to one gate must have the same size
  and pair up element by element, single qubits repeat;
* parameter expressions: numbers, `pi`, parameters, + - * / ^ (right-associative, binding tighter than unary minus:
  -2^2 = -4), parentheses, sin cos tan exp ln sqrt asin acos atan; evaluated in float64, never with eval;
* `barrier` is ignored; `measure` is ignored while nothing acts on the measured qubit afterwards; `reset` of a qubit
  nothing has acted on yet is a no-op. A gate after a measurement on its qubit, any other reset, and `if` are
  refused: they need a classical branch or a non-unitary step that a state-vector run does not have.

Aliases are read as one canonical Gate name with the same matrix: U/u -> u3, u1 -> p, cu1 -> cp, CX -> cx; id, u0
and delay (identities) emit nothing. Every refusal is a `QasmError` whose message is `file:line: problem 'statement'`.
Speed: about 1 s per 100k gate calls on this CPU (MQT Bench circuits at 20 qubits).
"""

from __future__ import annotations

import math
import os
import re

from qrjax.quantum.circuit import GATE_SPECS, Circuit, Gate


class QasmError(ValueError):
    """An OpenQASM input that cannot be read into a Circuit; the message is `source:line: problem 'statement'`."""


# One line at a time: no token spans lines (`//` comments end there, strings may not contain a newline). A comment
# is read as one token and dropped, so that nothing inside it (or inside a string) is ever read as a token.
_TOKEN = re.compile(r"[^\S\n]*+(//[^\n]*|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[A-Za-z_]\w*|->|==|"
                    r"\"[^\"\n]*\"|\S)")
_EOF = ""
_KEYWORDS = frozenset({"OPENQASM", "include", "qreg", "creg", "gate", "opaque", "barrier", "measure", "reset", "if"})
MAX_QUBITS = 4096

# qelib1 name -> Gate name (None: the identity, nothing emitted). qiskit's legacy loader maps each to a standard gate.
_LEGACY = {name: name for name in GATE_SPECS}
_LEGACY.update({"u1": "p", "cu1": "cp", "u": "u3", "id": None, "u0": None})
# defined without any include (qiskit's `builtin=True` custom instructions)
_BUILTIN = ("u0", "u", "p", "sx", "sxdg", "swap", "cswap", "crx", "cry", "cp", "csx", "cu", "rxx", "rzz", "rccx",
            "rc3x", "c3x", "c3sqrtx", "c4x")
# the paper's qelib1.inc, which `include "qelib1.inc"` adds
_QELIB1 = ("u3", "u2", "u1", "cx", "id", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "rx", "ry", "rz", "cz", "cy",
           "ch", "ccx", "crz", "cu1", "cu3")
_DELAY_SPEC = (1, 1)  # delay(duration) q: qiskit's Delay, the identity on the state

_NO_BRANCH = "a state-vector run has no classical branch to take"


class _Fail(Exception):
    """A problem found while reading one statement; the statement loop adds file, line and text. `start`/`end`
    (token indices) narrow the statement shown, e.g. to one statement of a gate body."""

    def __init__(self, problem: str, start: int | None = None, end: int | None = None):
        super().__init__(problem)
        self.problem, self.start, self.end = problem, start, end


def _math_error(what: str):
    raise _Fail(what)


def _div(a, b):
    if b == 0:
        _math_error("division by zero")
    return a / b


def _ln(x):
    if x <= 0:
        _math_error(f"ln of a non-positive number ({x!r})")
    return math.log(x)


def _sqrt(x):
    if x < 0:
        _math_error(f"sqrt of a negative number ({x!r})")
    return math.sqrt(x)


_BINOPS = {"+": float.__add__, "-": float.__sub__, "*": float.__mul__, "/": _div, "^": math.pow}
_FUNCS = {"sin": math.sin, "cos": math.cos, "tan": math.tan, "exp": math.exp, "ln": _ln, "sqrt": _sqrt,
          "asin": math.asin, "acos": math.acos, "atan": math.atan}
_RESERVED = _KEYWORDS | {"pi", "U", "CX"} | set(_FUNCS)


def _checked(value: float, what) -> float:
    if not math.isfinite(value):
        _math_error(f"{what()} is not finite")
    return value


def _binop(op: str, a: float, b: float) -> float:
    try:
        return _checked(_BINOPS[op](a, b), lambda: f"{a!r} {op} {b!r}")
    except (ValueError, OverflowError, ZeroDivisionError):
        _math_error(f"{a!r} {op} {b!r} is undefined or overflows")


def _call(fn: str, x: float) -> float:
    try:
        return _checked(_FUNCS[fn](x), lambda: f"{fn}({x!r})")
    except (ValueError, OverflowError):
        _math_error(f"{fn}({x!r}) is undefined or overflows")


# Expression trees: a float (constants are folded while parsing), ("par", index), ("neg", a), ("fn", name, a), or
# (op, a, b) for op in + - * / ^.
def _eval(node, values: tuple[float, ...]) -> float:
    if type(node) is float:
        return node
    tag = node[0]
    if tag == "par":
        return values[node[1]]
    if tag == "neg":
        return -_eval(node[1], values)
    if tag == "fn":
        return _call(node[1], _eval(node[2], values))
    return _binop(tag, _eval(node[1], values), _eval(node[2], values))


def _fold(op: str, a, b):
    if type(a) is float and type(b) is float:
        return _binop(op, a, b)
    return (op, a, b)


class _Entry:
    """What a gate name stands for: kind "prim" (Gate name `prim`), "noop" (an identity), "def" (a `gate`
    definition: `body` = ((callee _Entry, parameter trees, local qubit indices), ...)) or "opaque"."""

    __slots__ = ("name", "kind", "nparams", "nqubits", "prim", "body", "where")

    def __init__(self, name, kind, nparams, nqubits, prim=None, body=(), where="built in"):
        self.name, self.kind, self.nparams, self.nqubits = name, kind, nparams, nqubits
        self.prim, self.body, self.where = prim, body, where


def _legacy_entry(name: str, where: str) -> _Entry:
    if name == "delay":
        return _Entry(name, "noop", *_DELAY_SPEC, where=where)
    nqubits, nparams = GATE_SPECS[name]
    prim = _LEGACY[name]
    return _Entry(name, "noop" if prim is None else "prim", nparams, nqubits, prim, where=where)


class _Source:
    """One file's tokens: `toks` (strings, newlines dropped, a final _EOF) and `lines` (1-based, per token)."""

    def __init__(self, name: str, text: str, directory: str):
        self.name, self.text, self.dir = name, text, directory
        toks, lines = [], []
        findall = _TOKEN.findall
        for lineno, line in enumerate(text.split("\n"), start=1):
            found = findall(line)
            if "//" in line:
                found = [t for t in found if not t.startswith("//")]
            if found:
                toks.extend(found)
                lines.extend([lineno] * len(found))
        toks.append(_EOF)
        lines.append(text.count("\n") + 1)
        self.toks, self.lines = toks, lines
        self._spans = None

    def text_of(self, start: int, end: int) -> str:
        """The source text of tokens start..end (inclusive), blanks and comments between them collapsed to one
        space, shortened past 160 characters."""
        if self._spans is None:  # only on the error path: the tokenizer above keeps no positions
            self._spans, offset = [], 0
            for line in self.text.split("\n"):
                self._spans += [(offset + m.start(1), offset + m.end(1)) for m in _TOKEN.finditer(line)
                                if not m.group(1).startswith("//")]
                offset += len(line) + 1
        spans = self._spans
        end = min(end, len(spans) - 1)
        pieces = []
        for k in range(start, end + 1):
            s, e = spans[k]
            if k > start and s > spans[k - 1][1]:
                pieces.append(" ")
            pieces.append(self.text[s:e])
        shown = "".join(pieces)
        return shown if len(shown) <= 160 else shown[:150] + " ..."


def _describe(tok: str) -> str:
    return "end of file" if tok == _EOF else repr(tok)


def _is_ident(tok: str) -> bool:
    return bool(tok) and (tok[0].isalpha() or tok[0] == "_")


def _is_number(tok: str) -> bool:  # what _TOKEN reads as a number starts with an ASCII digit or '.' and a digit
    return bool(tok) and (tok[0] in "0123456789" or (tok[0] == "." and len(tok) > 1))


class _Parser:
    def __init__(self):
        self.gates: dict[str, _Entry] = {"U": _Entry("U", "prim", 3, 1, "u3"), "CX": _Entry("CX", "prim", 0, 2, "cx")}
        for name in _BUILTIN:
            self.gates[name] = _legacy_entry(name, "built in")
        self.qregs: dict[str, tuple[int, int]] = {}  # name -> (first circuit qubit, size)
        self.cregs: dict[str, int] = {}
        self.num_qubits = 0
        self.gates_out: list[Gate] = []
        self.measured: set[int] = set()
        self.touched: set[int] = set()  # qubits some emitted gate acts on
        self.including: list[str] = []  # real paths of the files being read, outermost first
        self.memo: dict = {}
        self.made: dict[tuple, Gate] = {}
        self.marks: list[int] = []  # Circuit.marks: where expanded definition calls start and end

    # ---- statements -------------------------------------------------------------------------------------------

    def run(self, src: _Source):
        toks, lines = src.toks, src.lines
        handlers = {"OPENQASM": self._version, "include": self._include, "qreg": self._register,
                    "creg": self._register, "gate": self._gate_def, "opaque": self._gate_def,
                    "barrier": self._barrier, "measure": self._measure, "reset": self._reset, "if": self._if}
        i, started = 0, False
        while toks[i] != _EOF:
            start = i
            t = toks[i]
            try:
                if t == ";":
                    i += 1
                elif t in handlers:
                    if t == "OPENQASM" and started:  # empty statements before it do not count, as in qiskit
                        raise _Fail("OPENQASM must be the first statement of a file")
                    i = handlers[t](src, i)
                elif _is_ident(t):
                    i = self._gate_call(src, i)
                else:
                    raise _Fail(f"a statement cannot start with {_describe(t)}", end=i)
                started = started or t != ";"
            except _Fail as f:
                s = start if f.start is None else f.start
                e = f.end
                if e is None:  # up to the statement's ';'
                    e = s
                    while toks[e] not in (";", _EOF):
                        e += 1
                raise QasmError(f"{src.name}:{lines[s]}: {f.problem} '{src.text_of(s, e)}'") from None

    @staticmethod
    def _expect(src: _Source, i: int, tok: str, what: str | None = None) -> int:
        if src.toks[i] != tok:
            found = src.toks[i]
            where = "" if src.lines[i] == src.lines[max(i - 1, 0)] else f" on line {src.lines[i]}"
            raise _Fail(f"missing {what or repr(tok)} (found {_describe(found)}{where})", end=i - 1)
        return i + 1

    @staticmethod
    def _ident(src: _Source, i: int, what: str) -> str:
        tok = src.toks[i]
        if not _is_ident(tok) or tok in _RESERVED:
            raise _Fail(f"expected {what}, found {_describe(tok)}", end=i)
        return tok

    @staticmethod
    def _int(src: _Source, i: int, what: str) -> int:
        tok = src.toks[i]
        if not (tok.isascii() and tok.isdigit()):
            raise _Fail(f"expected {what} (a non-negative integer), found {_describe(tok)}", end=i)
        return int(tok)

    def _version(self, src, i):
        tok = src.toks[i + 1]
        if not _is_number(tok) or float(tok) != 2.0:
            raise _Fail(f"unsupported OpenQASM version {_describe(tok)} (only 2.0)")
        return self._expect(src, i + 2, ";")

    def _include(self, src, i):
        tok = src.toks[i + 1]
        if len(tok) < 2 or tok[0] != '"' or tok[-1] != '"':
            raise _Fail(f'expected a file name in double quotes after include, found {_describe(tok)}', end=i + 1)
        end = self._expect(src, i + 2, ";")
        name = tok[1:-1]
        if name == "qelib1.inc":  # built in (qiskit's legacy set); a second include changes nothing
            for g in _QELIB1:
                self.gates.setdefault(g, _legacy_entry(g, "qelib1.inc"))
            return end
        path = os.path.join(src.dir, name)
        if not os.path.isfile(path):
            raise _Fail(f"include file '{name}' not found (looked in {os.path.abspath(src.dir)})")
        real = os.path.realpath(path)
        if real in self.including:
            chain = " -> ".join(os.path.basename(p) for p in self.including[self.including.index(real):])
            raise _Fail(f"include cycle: {chain} -> {os.path.basename(real)}")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise _Fail(f"cannot read include file '{name}': {e}") from None
        self.including.append(real)
        try:
            self.run(_Source(path, text, os.path.dirname(path)))
        finally:
            self.including.pop()
        return end

    def _register(self, src, i):
        kind = src.toks[i]
        name = self._ident(src, i + 1, f"a {kind} name")
        i = self._expect(src, i + 2, "[")
        size = self._int(src, i, "a register size")
        i = self._expect(src, i + 1, "]")
        end = self._expect(src, i, ";")
        if name in self.qregs or name in self.cregs:
            raise _Fail(f"register '{name}' declared twice")
        if kind == "creg":
            self.cregs[name] = size
        else:
            if self.num_qubits + size > MAX_QUBITS:
                raise _Fail(f"more than {MAX_QUBITS} qubits in all: no state vector that large can be simulated")
            self.qregs[name] = (self.num_qubits, size)
            self.num_qubits += size
        return end

    def _qarg(self, src, i) -> tuple[list[int] | range, bool, int]:
        """One quantum argument `r` or `r[k]`: (its circuit qubits, whether it is a whole register, next index)."""
        name = src.toks[i]
        reg = self.qregs.get(name)
        if reg is None:
            if not _is_ident(name):
                raise _Fail(f"expected a qubit argument, found {_describe(name)}", end=i)
            raise _Fail(f"unknown quantum register '{name}'" + (" (a creg)" if name in self.cregs else ""))
        offset, size = reg
        if src.toks[i + 1] != "[":
            return range(offset, offset + size), True, i + 1
        k = self._int(src, i + 2, "a qubit index")
        if k >= size:
            raise _Fail(f"index {k} out of range for qreg {name}[{size}]")
        return [offset + k], False, self._expect(src, i + 3, "]")

    def _qargs(self, src, i, allow_empty=False):
        """Comma-separated quantum arguments up to ';': ([(qubits, is_register), ...], index after the ';')."""
        args = []
        if allow_empty and src.toks[i] == ";":
            return args, i + 1
        while True:
            qubits, is_reg, i = self._qarg(src, i)
            args.append((qubits, is_reg))
            if src.toks[i] != ",":
                return args, self._expect(src, i, ";")
            i += 1
            if src.toks[i] == ";":  # a trailing comma, which qiskit allows
                return args, i + 1

    @staticmethod
    def _broadcast(args) -> list[tuple[int, ...]]:
        sizes = {len(q) for q, is_reg in args if is_reg}
        if not sizes:
            return [tuple(q[0] for q, _ in args)]
        if len(sizes) > 1:
            raise _Fail(f"registers of different sizes ({', '.join(map(str, sorted(sizes)))}) in one statement")
        (count,) = sizes
        return [tuple(q[r] if is_reg else q[0] for q, is_reg in args) for r in range(count)]

    def _qubit_name(self, q: int) -> str:
        for name, (offset, size) in self.qregs.items():
            if offset <= q < offset + size:
                return f"{name}[{q - offset}]"
        return f"qubit {q}"

    def _barrier(self, src, i):
        _, end = self._qargs(src, i + 1, allow_empty=True)
        return end

    def _measure(self, src, i):
        qubits, q_is_reg, i = self._qarg(src, i + 1)
        i = self._expect(src, i, "->", "'->'")
        name = src.toks[i]
        if name not in self.cregs:
            if not _is_ident(name):
                raise _Fail(f"expected a classical register, found {_describe(name)}", end=i)
            raise _Fail(f"unknown classical register '{name}'")
        size = self.cregs[name]
        if src.toks[i + 1] == "[":
            k = self._int(src, i + 2, "a bit index")
            if k >= size:
                raise _Fail(f"index {k} out of range for creg {name}[{size}]")
            i, c_is_reg, c_size = self._expect(src, i + 3, "]"), False, 1
        else:
            i, c_is_reg, c_size = i + 1, True, size
        end = self._expect(src, i, ";")
        if q_is_reg != c_is_reg or (q_is_reg and len(qubits) != c_size):
            raise _Fail("measure needs a qubit and a bit, or a qreg and a creg of the same size")
        self.measured.update(qubits)
        return end

    def _reset(self, src, i):
        args, end = self._qargs(src, i + 1)
        if len(args) != 1:
            raise _Fail(f"reset takes one qubit or register, got {len(args)}")
        for q in args[0][0]:
            if q in self.touched or q in self.measured:
                raise _Fail(f"reset of {self._qubit_name(q)} after it was acted on is not unitary (it discards the "
                            "qubit's state); a state-vector run cannot apply it")
        return end  # a qubit nothing has acted on is still |0>: the reset does nothing

    def _if(self, src, i):
        raise _Fail(f"'if' (a classically controlled operation) is not supported: {_NO_BRANCH}")

    # ---- gate definitions ----------------------------------------------------------------------------------------

    def _names(self, src, i, what: str) -> tuple[list[str], int]:
        """Identifiers separated by commas from i (a trailing comma allowed, as in qiskit): (names, index of the
        token after them)."""
        names = []
        while True:
            names.append(self._ident(src, i, what))
            i += 1
            if src.toks[i] != ",":
                return names, i
            i += 1
            if src.toks[i] in (")", "{", ";"):
                return names, i

    def _gate_def(self, src, i):
        start = i
        opaque = src.toks[i] == "opaque"
        name = self._ident(src, i + 1, "a gate name")
        where = f"{src.name}:{src.lines[start]}"
        i += 2
        params: list[str] = []
        if src.toks[i] == "(":
            i += 1
            if src.toks[i] != ")":
                params, i = self._names(src, i, "a parameter name")
            i = self._expect(src, i, ")")
        qubits, i = self._names(src, i, "a qubit argument name")
        if len(set(params + qubits)) != len(params) + len(qubits):
            raise _Fail(f"gate '{name}': parameter and qubit names must be distinct", end=i - 1)
        if opaque:
            end = self._expect(src, i, ";")
            body = ()
        else:
            i = self._expect(src, i, "{")
            body, end = self._body(src, i, start, name, {p: k for k, p in enumerate(params)},
                                   {q: k for k, q in enumerate(qubits)})
        self._declare(name, opaque, len(params), len(qubits), body, where, start, end - 1)
        return end

    def _declare(self, name, opaque, nparams, nqubits, body, where, start, end):
        old = self.gates.get(name)
        if name in _LEGACY or name == "delay":
            spec = _DELAY_SPEC if name == "delay" else GATE_SPECS[name][::-1]
            if (nparams, nqubits) != spec:
                raise _Fail(f"'{name}' is qelib1's gate with {spec[0]} parameter(s) and {spec[1]} qubit(s); this "
                            f"declaration has {nparams} and {nqubits}", start, end)
            if old is not None and old.where != "built in":
                raise _Fail(f"gate '{name}' is already defined ({old.where})", start, end)
            # as in qiskit's legacy loader: the standard gate, not the body (same operator up to global phase)
            self.gates[name] = _legacy_entry(name, where)
            return
        if old is not None:
            raise _Fail(f"gate '{name}' is already defined ({old.where})", start, end)
        if opaque:
            self.gates[name] = _Entry(name, "opaque", nparams, nqubits, where=where)
        else:
            self.gates[name] = _Entry(name, "def", nparams, nqubits, body=tuple(body), where=where)

    def _body(self, src, i, gate_start, gate_name, params: dict, qubits: dict):
        """The statements of a gate body from after '{': ([(callee, trees, local qubits), ...], index after '}')."""
        toks = src.toks
        body = []
        while True:
            start = i
            t = toks[i]
            if t == "}":
                return body, i + 1
            if t == _EOF:
                raise _Fail(f"gate '{gate_name}': body not closed with '}}' before the end of the file",
                            gate_start, min(gate_start + 12, i - 1))
            try:
                if t == "barrier":
                    names, i = self._names(src, i + 1, "a qubit argument name")
                    for n in names:
                        if n not in qubits:
                            raise _Fail(f"'{n}' is not a qubit argument of gate '{gate_name}'")
                    i = self._expect(src, i, ";")
                    continue
                if t in _KEYWORDS or not _is_ident(t):
                    raise _Fail(f"only gate calls and barrier may appear in a gate body, found {_describe(t)}")
                callee = self.gates.get(t)
                if callee is None:
                    raise _Fail(self._unknown_gate(t) + " (gates must be defined before a body uses them)")
                trees, i = self._params(src, i + 1, params)
                names, i = self._names(src, i, "a qubit argument name (no indexing inside a gate body)")
                i = self._expect(src, i, ";")
                self._check_call(callee, len(trees), len(names))
                for n in names:
                    if n not in qubits:
                        raise _Fail(f"'{n}' is not a qubit argument of gate '{gate_name}'")
                if len(set(names)) != len(names):
                    raise _Fail("a gate's qubits must be distinct")
                body.append((callee, tuple(trees), tuple(qubits[n] for n in names)))
            except _Fail as f:
                if f.start is None:
                    f.start = start
                    f.problem += f" (in the body of gate '{gate_name}')"
                raise

    # ---- gate calls --------------------------------------------------------------------------------------------

    def _unknown_gate(self, name: str) -> str:
        if name in _QELIB1:
            return f"unknown gate '{name}' (it is in qelib1.inc: add include \"qelib1.inc\";)"
        return f"unknown gate '{name}'"

    @staticmethod
    def _check_call(entry: _Entry, nparams: int, nqubits: int):
        if nparams != entry.nparams:
            raise _Fail(f"gate '{entry.name}' takes {entry.nparams} parameter(s), got {nparams}")
        if nqubits != entry.nqubits:
            raise _Fail(f"gate '{entry.name}' acts on {entry.nqubits} qubit(s), got {nqubits}")

    def _params(self, src, i, names: dict | None):
        """An optional parenthesised expression list at i: (trees, next index); with names=None (outside a gate
        body) every tree is a float."""
        if src.toks[i] != "(":
            return [], i
        i += 1
        trees = []
        if src.toks[i] == ")":
            return trees, i + 1
        while True:
            first = i
            try:
                tree, i = self._expr(src, i, names)
                if src.toks[i] not in (",", ")"):
                    raise _Fail(f"unexpected {_describe(src.toks[i])}")
            except _Fail as f:
                last, depth = first, 0
                while src.toks[last] not in (";", _EOF) and not (depth == 0 and src.toks[last] in (",", ")")):
                    depth += {"(": 1, ")": -1}.get(src.toks[last], 0)
                    last += 1
                raise _Fail(f"bad expression '{src.text_of(first, last - 1)}': {f.problem}") from None
            trees.append(tree)
            if src.toks[i] == ")":
                return trees, i + 1
            i += 1
            if src.toks[i] == ")":  # a trailing comma, which qiskit allows
                return trees, i + 1

    def _gate_call(self, src, i):
        start = i
        name = src.toks[i]
        entry = self.gates.get(name)
        if entry is None:
            raise _Fail(self._unknown_gate(name))
        values, i = self._params(src, i + 1, None)
        args, end = self._qargs(src, i)
        self._check_call(entry, len(values), len(args))
        values = tuple(values)
        kind = entry.kind
        if kind == "opaque":
            raise _Fail(f"gate '{name}' is opaque ({entry.where}): it has no definition to simulate")
        for qubits in self._broadcast(args):
            if len(set(qubits)) != len(qubits):
                raise _Fail("a gate's qubits must be distinct")
            if kind == "prim":
                self._emit(entry.prim, qubits, values)
            elif kind == "def":
                body = self._expand(entry, values)
                if len(body) > 1:  # a unit the simulators compile apart, so repeated calls share their programs
                    self._mark()
                for g, p, local in body:
                    self._emit(g, tuple(qubits[j] for j in local), p)
                if len(body) > 1:
                    self._mark()
        return end

    def _mark(self):
        if not self.marks or self.marks[-1] != len(self.gates_out):
            self.marks.append(len(self.gates_out))

    def _expand(self, entry: _Entry, values: tuple[float, ...]) -> list[tuple[str, tuple, tuple]]:
        """The primitive gates of a `gate` definition called with `values`: [(Gate name, angles, local qubits)]."""
        key = (id(entry), values)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        out = []
        for callee, trees, local in entry.body:
            vals = tuple(_eval(t, values) for t in trees)
            kind = callee.kind
            if kind == "prim":
                out.append((callee.prim, vals, local))
            elif kind == "def":
                out.extend((g, p, tuple(local[j] for j in q)) for g, p, q in self._expand(callee, vals))
            elif kind == "opaque":
                raise _Fail(f"gate '{callee.name}' (called by '{entry.name}') is opaque ({callee.where}): it has "
                            "no definition to simulate")
        self.memo[key] = out
        return out

    def _emit(self, name: str, qubits: tuple[int, ...], params: tuple[float, ...]):
        if self.measured and not self.measured.isdisjoint(qubits):
            q = next(q for q in qubits if q in self.measured)
            raise _Fail(f"gate '{name}' on {self._qubit_name(q)} after it was measured: a mid-circuit measurement "
                        f"needs a classical outcome, and {_NO_BRANCH}")
        self.touched.update(qubits)
        key = (name, qubits, params)
        gate = self.made.get(key)  # Gates are immutable: expanded definitions repeat the same ones many times
        if gate is None:
            try:
                gate = self.made[key] = Gate(name, qubits, params)
            except ValueError as e:
                raise _Fail(str(e)) from None
        self.gates_out.append(gate)

    # ---- expressions -------------------------------------------------------------------------------------------

    @staticmethod
    def _left_assoc(src, i, names, ops, operand):
        """operand (op operand)*, folded left to right: one precedence level of the expression grammar."""
        a, i = operand(src, i, names)
        while src.toks[i] in ops:
            op = src.toks[i]
            b, i = operand(src, i + 1, names)
            a = _fold(op, a, b)
        return a, i

    def _expr(self, src, i, names):
        return self._left_assoc(src, i, names, ("+", "-"), self._term)

    def _term(self, src, i, names):
        return self._left_assoc(src, i, names, ("*", "/"), self._unary)

    def _unary(self, src, i, names):
        t = src.toks[i]
        if t == "-":
            a, i = self._unary(src, i + 1, names)
            return (-a if type(a) is float else ("neg", a)), i
        if t == "+":
            return self._unary(src, i + 1, names)
        a, i = self._atom(src, i, names)
        if src.toks[i] == "^":  # right-associative; the exponent may carry its own sign: 2^-1
            b, i = self._unary(src, i + 1, names)
            a = _fold("^", a, b)
        return a, i

    def _atom(self, src, i, names):
        t = src.toks[i]
        if _is_number(t):
            return _checked(float(t), lambda: t), i + 1
        if t == "pi":
            return math.pi, i + 1
        if t == "(":
            a, i = self._expr(src, i + 1, names)
            return a, self._expect(src, i, ")")
        if t in _FUNCS:
            i = self._expect(src, i + 1, "(", f"'(' after {t}")
            a, i = self._expr(src, i, names)
            i = self._expect(src, i, ")")
            return (_call(t, a) if type(a) is float else ("fn", t, a)), i
        if names is not None and t in names:
            return ("par", names[t]), i + 1
        if _is_ident(t):
            raise _Fail(f"unknown name '{t}'")
        raise _Fail(f"unexpected {_describe(t)}")

    def circuit(self, name: str, source: str) -> Circuit:
        if self.num_qubits == 0:
            raise QasmError(f"{source}: no qubits declared (no qreg, or only empty ones)")
        return Circuit(self.num_qubits, tuple(self.gates_out), name=name, marks=tuple(self.marks))


def evaluate(expr: str) -> float:
    """The value of an OpenQASM 2 parameter expression without parameters (numbers, pi, + - * / ^, unary -,
    parentheses, sin cos tan exp ln sqrt asin acos atan), in float64. Raises ValueError naming the expression."""
    src = _Source("<expression>", expr, ".")
    try:
        value, i = _Parser()._expr(src, 0, None)
        if src.toks[i] != _EOF:
            raise _Fail(f"unexpected {_describe(src.toks[i])}")
    except _Fail as f:
        raise ValueError(f"bad expression '{expr.strip()}': {f.problem}") from None
    return value


def parse_qasm(text: str, *, source: str = "<string>", include_dir: str | os.PathLike | None = None) -> Circuit:
    """The Circuit an OpenQASM 2.0 program describes (see the module docstring). `source` names the input in error
    messages and the circuit; includes other than qelib1.inc are read relative to `include_dir` (default: the
    current directory). Raises QasmError."""
    directory = os.fspath(include_dir) if include_dir is not None else os.getcwd()
    parser = _Parser()
    parser.run(_Source(source, text, directory))
    return parser.circuit(os.path.splitext(os.path.basename(source))[0] or "circuit", source)


def load_qasm(path) -> Circuit:
    """parse_qasm of the file at `path` (errors name the file; includes are read relative to its directory). A
    missing file raises FileNotFoundError, a file that is not UTF-8 text QasmError."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise QasmError(f"{path}: not UTF-8 text: {e}") from None
    parser = _Parser()
    parser.including.append(os.path.realpath(path))
    parser.run(_Source(path, text, os.path.dirname(path) or "."))
    return parser.circuit(os.path.splitext(os.path.basename(path))[0] or "circuit", path)


# Written as the paper's qelib1.inc names where a gate has one, which every OpenQASM 2 reader knows; u0 (an identity
# whose count qiskit wants integral) as id.
_WRITE_NAMES = {"p": "u1", "cp": "cu1", "u": "u3", "u0": "id"}


def to_qasm(circuit: Circuit) -> str:
    """OpenQASM 2.0 text for `circuit`: one register q[n], one gate per line, angles written exactly (repr), gate
    names from qelib1.inc, so qiskit's `qasm2.loads(..., custom_instructions=LEGACY_CUSTOM_INSTRUCTIONS)` and
    parse_qasm read it back (parse_qasm as the same gates, up to the aliases it renames and identities it drops)."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{circuit.num_qubits}];"]
    for g in circuit.gates:
        name = _WRITE_NAMES.get(g.name, g.name)
        params = g.params if name != "id" else ()
        args = f"({','.join(repr(float(p)) for p in params)})" if params else ""
        lines.append(f"{name}{args} {','.join(f'q[{q}]' for q in g.qubits)};")
    return "\n".join(lines) + "\n"


__all__ = ["MAX_QUBITS", "QasmError", "evaluate", "load_qasm", "parse_qasm", "to_qasm"]
