"""``rnnkit export DIR --format onnx [--out FILE]``: the model as ONNX + its preprocessing JSON."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("export", help="export a trained model (ONNX) with its preprocessing as JSON")
    p.add_argument("dir", help="run directory (artifact)")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    p.add_argument("--out", help="output file (default: DIR/model.onnx); the preprocessing goes to FILE.json")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from rnnkit.export import export_onnx

    out, sidecar = export_onnx(args.dir, args.out, opset=args.opset)
    print(f"wrote {out} and {sidecar}")
    return 0
