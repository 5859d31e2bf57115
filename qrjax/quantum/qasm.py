"""OpenQASM 2.0 reader and writer for the subset the benchmark circuits use.

Accepted: `OPENQASM 2.0;`, `include "qelib1.inc";`, `qreg name[n];` (several registers are concatenated in declaration
order: the first register's qubit 0 is circuit qubit 0), `creg` (ignored), `barrier` (ignored), `measure` (ignored;
only at the end: a gate on a measured qubit is an error), `//` comments, and the gates

    h x y z s sdg t tdg id rx ry rz  u3 u U (= u3)  u2 (= u3(pi/2, phi, lambda))  u1 p (= phase diag(1, e^{i lambda}))
    cx CX cz cp cu1 (= cp) swap

applied to indexed qubits `q[3]` or whole registers `q` (`h q;` applies H to every qubit of q; for two-qubit gates
whole registers of equal size pair up element by element, and an indexed qubit is repeated against a register).
Parameters are expressions of numbers, `pi`, + - * / ^, unary minus, parentheses and sin cos tan exp ln sqrt,
evaluated by a small recursive-descent parser (no eval). A statement must end with `;` on the line where it starts.

Anything else (gate definitions, `if`, `reset`, `opaque`, other includes, unknown gates, out-of-range indices, bad
expressions, missing semicolons) raises `QasmError` naming the source, the line number and the offending text.
"""

from __future__ import annotations

import math
import os
import re

from qrjax.quantum.circuit import Circuit, Gate


class QasmError(ValueError):
    """An OpenQASM input outside the supported subset; the message is `source:line: problem 'text'`."""


# QASM name -> (our gate name, number of qubits, number of parameters)
_GATES = {
    "h": ("h", 1, 0), "x": ("x", 1, 0), "y": ("y", 1, 0), "z": ("z", 1, 0),
    "s": ("s", 1, 0), "sdg": ("sdg", 1, 0), "t": ("t", 1, 0), "tdg": ("tdg", 1, 0), "id": (None, 1, 0),
    "rx": ("rx", 1, 1), "ry": ("ry", 1, 1), "rz": ("rz", 1, 1),
    "u3": ("u3", 1, 3), "u": ("u3", 1, 3), "U": ("u3", 1, 3), "u2": ("u3", 1, 2),
    "u1": ("p", 1, 1), "p": ("p", 1, 1),
    "cx": ("cx", 2, 0), "CX": ("cx", 2, 0), "cz": ("cz", 2, 0), "cp": ("cp", 2, 1), "cu1": ("cp", 2, 1),
    "swap": ("swap", 2, 0),
}
_UNSUPPORTED = ("gate", "opaque", "if", "reset")
_FUNCS = {"sin": math.sin, "cos": math.cos, "tan": math.tan, "exp": math.exp, "ln": math.log, "sqrt": math.sqrt}
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z_]\w*)|(.))")
_ID = r"[A-Za-z_]\w*"
_REG_DECL = re.compile(rf"^(qreg|creg)\s+({_ID})\s*\[\s*(\d+)\s*\]$")
_GATE_STMT = re.compile(rf"^({_ID})\s*(?:\((.*)\))?\s*(.*)$", re.S)
_ARG = re.compile(rf"^({_ID})\s*(?:\[\s*(\d+)\s*\])?$")


class _ExprError(Exception):
    pass


def evaluate(expr: str) -> float:
    """The value of a QASM parameter expression (numbers, pi, + - * / ^, unary -, parentheses, sin cos tan exp ln
    sqrt). Raises ValueError naming the expression on anything else."""
    tokens = []
    pos = 0
    text = expr.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            break
        num, name, sym = m.groups()
        if num is not None:
            tokens.append(("num", float(num)))
        elif name is not None:
            tokens.append(("name", name))
        elif not sym.isspace():
            tokens.append(("sym", sym))
        pos = m.end()
    tokens.append(("end", None))
    i = 0

    def peek():
        return tokens[i]

    def take():
        nonlocal i
        i += 1
        return tokens[i - 1]

    def expect(sym):
        tok = take()
        if tok != ("sym", sym):
            raise _ExprError(f"expected '{sym}'")

    def sum_():
        v = product()
        while peek() in (("sym", "+"), ("sym", "-")):
            v = v + product() if take()[1] == "+" else v - product()
        return v

    def product():
        v = unary()
        while peek() in (("sym", "*"), ("sym", "/")):
            op = take()[1]
            rhs = unary()
            if op == "/" and rhs == 0:
                raise _ExprError("division by zero")
            v = v * rhs if op == "*" else v / rhs
        return v

    def unary():
        if peek() in (("sym", "-"), ("sym", "+")):
            return -unary() if take()[1] == "-" else unary()
        return power()

    def power():
        v = atom()
        if peek() == ("sym", "^"):
            take()
            v = v ** unary()  # right-associative, binds tighter than unary minus on its left
        return v

    def atom():
        kind, val = take()
        if kind == "num":
            return val
        if kind == "name":
            if val == "pi":
                return math.pi
            if val in _FUNCS:
                expect("(")
                arg = sum_()
                expect(")")
                try:
                    return _FUNCS[val](arg)
                except (ValueError, OverflowError):
                    raise _ExprError(f"{val}({arg}) is undefined") from None
            raise _ExprError(f"unknown name '{val}'")
        if (kind, val) == ("sym", "("):
            v = sum_()
            expect(")")
            return v
        raise _ExprError("unexpected end" if kind == "end" else f"unexpected '{val}'")

    try:
        if pos < len(text):
            raise _ExprError(f"cannot read '{text[pos:]}'")
        value = sum_()
        if peek()[0] != "end":
            raise _ExprError(f"unexpected '{peek()[1]}'")
        if not math.isfinite(value):
            raise _ExprError("not finite")
    except (_ExprError, OverflowError, ZeroDivisionError) as e:
        raise ValueError(f"bad expression '{expr.strip()}': {e}") from None
    return float(value)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_qasm(text: str, *, source: str = "<string>") -> Circuit:
    """The Circuit an OpenQASM 2.0 program describes (see the module docstring for the subset). `source` names the
    input in error messages. Raises QasmError."""
    qregs: dict[str, tuple[int, int]] = {}  # name -> (offset, size)
    cregs: dict[str, int] = {}
    gates: list[Gate] = []
    measured: set[int] = set()
    seen_header = False
    nq = 0

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue

        def fail(problem, stmt=None):
            shown = (stmt if stmt is not None else line).strip()
            raise QasmError(f"{source}:{lineno}: {problem} '{shown}'")

        first = re.match(r"[A-Za-z_]\w*", line)
        if first and first.group(0) in _UNSUPPORTED:  # before the ';' check: `gate g a { ... }` has no final ';'
            fail("unsupported statement")
        if not line.endswith(";"):
            fail("missing ';' at the end of")
        for stmt in line[:-1].split(";"):
            stmt = stmt.strip()
            if not stmt:
                fail("empty statement in")
            full = stmt + ";"
            word = re.match(r"[A-Za-z_]\w*", stmt)
            keyword = word.group(0) if word else ""
            if keyword == "OPENQASM":
                if seen_header or gates or qregs:
                    fail("OPENQASM must be the first statement", full)
                if not re.fullmatch(r"OPENQASM\s+2(\.0)?", stmt):
                    fail("unsupported OpenQASM version (only 2.0)", full)
                seen_header = True
            elif keyword == "include":
                if not re.fullmatch(r'include\s+"qelib1\.inc"', stmt):
                    fail("unsupported include (only \"qelib1.inc\")", full)
            elif keyword in ("qreg", "creg"):
                m = _REG_DECL.match(stmt)
                if m is None:
                    fail(f"malformed {keyword} declaration", full)
                name, size = m.group(2), int(m.group(3))
                if name in qregs or name in cregs:
                    fail(f"register '{name}' declared twice", full)
                if size < 1:
                    fail("register size must be >= 1", full)
                if keyword == "qreg":
                    qregs[name] = (nq, size)
                    nq += size
                else:
                    cregs[name] = size
            elif keyword in _UNSUPPORTED:
                fail("unsupported statement", full)
            elif keyword in ("barrier", "measure"):
                qargs = stmt[len(keyword):]
                if keyword == "measure":
                    m = re.fullmatch(r"\s+(.+?)\s*->\s*(.+)", qargs)
                    if m is None:
                        fail("malformed measure", full)
                    qargs, carg = m.group(1), m.group(2).strip()
                    cm = _ARG.match(carg)
                    if cm is None or cm.group(1) not in cregs:
                        fail(f"unknown classical register in '{carg}'", full)
                for group in _resolve_args(qargs, qregs, fail, full):
                    if keyword == "measure":
                        measured.update(group)
            else:
                m = _GATE_STMT.match(stmt)
                if m is None or not keyword:
                    fail("malformed statement", full)
                qname, ptext, argtext = m.group(1), m.group(2), m.group(3)
                if qname not in _GATES:
                    fail(f"unknown gate '{qname}' in", full)
                gname, arity, nparams = _GATES[qname]
                params = []
                if ptext is not None and ptext.strip():
                    for expr in _split_top_level(ptext):
                        try:
                            params.append(evaluate(expr))
                        except ValueError as e:
                            fail(str(e) + " in", full)
                if len(params) != nparams:
                    fail(f"gate '{qname}' takes {nparams} parameter(s), got {len(params)}", full)
                if qname == "u2":
                    params = [math.pi / 2, *params]
                args = _split_top_level(argtext)
                if len(args) != arity:
                    fail(f"gate '{qname}' acts on {arity} qubit(s), got {len(args)}", full)
                for qubits in _broadcast([_resolve_one(a, qregs, fail, full) for a in args], fail, full):
                    if len(set(qubits)) != len(qubits):
                        fail("a gate's qubits must be distinct", full)
                    if measured.intersection(qubits):
                        fail("gate after measure is not supported (measure only at the end)", full)
                    if gname is not None:
                        gates.append(Gate(gname, qubits, tuple(params)))

    if not qregs:
        raise QasmError(f"{source}: no qreg declared")
    return Circuit(nq, tuple(gates), name=os.path.splitext(os.path.basename(source))[0] or "circuit")


def _resolve_one(arg: str, qregs, fail, stmt) -> list[int]:
    m = _ARG.match(arg.strip())
    if m is None:
        fail(f"malformed qubit argument '{arg.strip()}' in", stmt)
    name, index = m.group(1), m.group(2)
    if name not in qregs:
        fail(f"unknown quantum register '{name}' in", stmt)
    offset, size = qregs[name]
    if index is None:
        return list(range(offset, offset + size))
    if int(index) >= size:
        fail(f"index {index} out of range for qreg {name}[{size}] in", stmt)
    return [offset + int(index)]


def _resolve_args(text: str, qregs, fail, stmt) -> list[tuple[int, ...]]:
    args = _split_top_level(text)
    if not text.strip():
        fail("missing qubit arguments in", stmt)
    return [tuple(q) for a in args for q in ([x] for x in _resolve_one(a, qregs, fail, stmt))]


def _broadcast(lists: list[list[int]], fail, stmt) -> list[tuple[int, ...]]:
    """QASM register broadcasting: whole registers pair up element-wise; single qubits repeat."""
    sizes = {len(x) for x in lists if len(x) > 1}
    if len(sizes) > 1:
        fail("registers of different sizes in", stmt)
    count = sizes.pop() if sizes else 1
    return [tuple(x[i] if len(x) > 1 else x[0] for x in lists) for i in range(count)]


def load_qasm(path) -> Circuit:
    """parse_qasm of the file at `path` (errors name the file)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        return parse_qasm(f.read(), source=path)


_WRITE_NAMES = {"p": "u1", "cp": "cu1"}  # the original qelib1.inc names, which every OpenQASM 2 reader knows


def to_qasm(circuit: Circuit) -> str:
    """OpenQASM 2.0 text for `circuit`: one register q[n], one gate per line, angles written exactly (repr)."""
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{circuit.num_qubits}];"]
    for g in circuit.gates:
        name = _WRITE_NAMES.get(g.name, g.name)
        params = f"({','.join(repr(float(p)) for p in g.params)})" if g.params else ""
        lines.append(f"{name}{params} {','.join(f'q[{q}]' for q in g.qubits)};")
    return "\n".join(lines) + "\n"
