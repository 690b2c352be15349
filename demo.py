"""A local web page for the detector: drop images, see P(fake), the verdict and the NPR residual
(SAFE's wavelet sub-band for a SAFE checkpoint).

    pip install -r requirements-demo.txt
    python demo.py                                   # the main job's checkpoint (python train.py first)
    python demo.py --model_path NPR.pth --port 7860

Served on 127.0.0.1 only: no share link, no analytics, no web fonts, nothing fetched from the
internet. Scores come from ``engine.score_files`` (``networks.score_images``), the path of
``predict.py`` and the notebook API's ``predict_proba``, so the page and the command line give
the same numbers for the same file.
"""
import atexit
import os
import shutil
import socket
import sys
import tempfile
import time

from data.discovery import list_images
from data.images import SKIP_REASONS
from data.transforms import EvalTransform
from engine import score_files
from metrics import THRESHOLD_CHOICES, decide_threshold
from networks import get_operator, load_for_evaluation
from networks.checkpoint import require_checkpoint
from options import MINI_CHECKPOINT, MINI_ROOT
from options.base_options import add_weights_option, gpu_ids, port, size
from figures import ArtifactFigures
from devices import keep_freed_memory, select_device, set_numerics
from util import OneLineErrorParser, run_cli, UserError

MAX_UPLOAD = "50mb"   # per file: a 48 Mpx JPEG is 10-25 MB; larger uploads are refused by the server
KEEP_SECONDS = 3600   # uploads (gradio's cache) and figures older than this are deleted
COLUMNS = ["file", "P(fake)", "verdict", "size seen by the model", "resized", "note"]


def gradio():
    """The gradio module, imported on first use: the page needs the demo's extra packages, its
    options and helpers do not. Without them, one line that says how to install them."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported
    try:
        import gradio as gr
        import demo_limits  # noqa: F401  (python-multipart and starlette, gradio's own)
    except ImportError as e:
        raise UserError(f"the demo needs its extra packages ({e}): pip install -r requirements-demo.txt") from None
    return gr


def example_images():
    """(path, label): a real and a fake NPR-mini test image per generator, when it is built."""
    test = os.path.join(MINI_ROOT, "test")
    if not os.path.isdir(test):
        return []
    out = []
    for gen in sorted(os.listdir(test)):
        for label in ("0_real", "1_fake"):
            out += [(p, f"{gen} {label[2:]}") for p in list_images(os.path.join(test, gen, label))[:1]]
    return out


# The page's threshold choices, named as metrics.decide_threshold names them ("custom": the slider).
PAGE_CHOICES = {"auto": "auto", "0.5": "paper"}


def mini_note(model_path):
    """A warning when the page serves NPR-mini's checkpoint, which has seen only 48 px patches."""
    if "npr-mini" not in os.path.abspath(model_path).replace(os.sep, "/"):
        return ""
    return ("\n\n**This is the NPR-mini checkpoint** (`python train.py` without data): trained on 48-pixel "
            "patches of a few photographs and four small auto-encoders, for a demonstration. On your own photos "
            "its verdict says little. For real use, `python -m tools.download weights` and "
            "`python demo.py --model_path NPR.pth` (the authors' ProGAN-trained detector).")


def prune(folder, max_age=KEEP_SECONDS):
    """Delete files in ``folder`` older than ``max_age`` seconds. The folder may be gone (a cleaner
    of /tmp emptied it: the figures recreate it) and files may vanish meanwhile."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.is_file() and now - entry.stat().st_mtime > max_age:
                os.remove(entry.path)
        except FileNotFoundError:
            pass


def build_app(model, stored, model_path, load_size=256):
    """The page for ``model`` and its checkpoint's ``stored`` threshold (``load_model``): upload
    (or pick examples), choose the threshold, read the table and figures."""
    figures_dir = tempfile.mkdtemp(prefix="npr-demo-")
    atexit.register(shutil.rmtree, figures_dir, ignore_errors=True)
    figures = ArtifactFigures(figures_dir, model.operator)
    stored_text = f"{stored:.4f}" if stored is not None else "none in this checkpoint"

    def run(files, choice, custom, resize):
        prune(figures_dir)
        paths = [f if isinstance(f, str) else f.name for f in (files or [])]
        if not paths:
            return [], [], "Upload one or several images first.", []
        threshold, source, _ = decide_threshold(PAGE_CHOICES.get(choice, float(custom)), stored,
                                                given_by="the page's slider")
        transform = EvalTransform(load_size, load_size, resize=resize, crop=False)
        rows = list(score_files(model, paths, transform, threshold, figure=figures))
        table = [[os.path.basename(r["path"]), None if r["prob_fake"] is None else round(r["prob_fake"], 4),
                  r["verdict"], r["size"] or "-", "yes" if resize else "no", SKIP_REASONS.get(r["verdict"], "")]
                 for r in rows]
        gallery = [(r["figure"], f"{os.path.basename(r['path'])}: P(fake) {r['prob_fake']:.3f}, {r['verdict']}")
                   for r in rows if r["figure"]]
        status = f"Verdict: fake when P(fake) > {threshold:.4f} ({source}). {len(paths)} file(s)."
        details = [{"file": os.path.basename(r["path"]), "prob_fake": r["prob_fake"], "verdict": r["verdict"],
                    "size": r["size"], "resized": resize, "threshold": threshold} for r in rows]
        return table, gallery, status, details

    gr = gradio()
    # delete_cache: gradio deletes uploaded files older than KEEP_SECONDS, checking as often.
    with gr.Blocks(title="NPR detector", delete_cache=(KEEP_SECONDS, KEEP_SECONDS)) as app:
        gr.Markdown(f"# NPR: is this image generated?\nCheckpoint `{model_path}` (stored threshold: {stored_text}). "
                    "Pixels are kept as they are unless you tick *resize*: NPR reads traces between "
                    "neighbouring pixels, which resizing smooths away. Images above 1 Mpx are scored in "
                    f"512 px tiles; uploads are limited to {MAX_UPLOAD} per file." + mini_note(model_path))
        with gr.Row():
            with gr.Column():
                files = gr.File(file_count="multiple", type="filepath", label="Images")
                choice = gr.Radio(["auto", "0.5", "custom"], value="auto", label="Decision threshold",
                                  info="auto: " + THRESHOLD_CHOICES["auto"])
                custom = gr.Slider(0.0, 1.0, value=0.5, step=0.001, label="Custom threshold")
                resize = gr.Checkbox(value=False, label=f"Resize to {load_size} x {load_size} first (the reference's "
                                                        "test-time resize)")
                button = gr.Button("Analyse", variant="primary")
                examples = example_images()
                if examples:
                    gr.Examples([[[p]] for p, _ in examples], inputs=[files], label="NPR-mini test images",
                                example_labels=[label for _, label in examples])
            with gr.Column():
                status = gr.Markdown()
                table = gr.Dataframe(headers=COLUMNS, label="Results", interactive=False)
                gallery = gr.Gallery(label=get_operator(model.operator).label, columns=1)
                details = gr.JSON(visible=False)
        button.click(run, [files, choice, custom, resize], [table, gallery, status, details], api_name="analyse")
    return app


def get_args_parser():
    p = OneLineErrorParser("A local web page for the NPR detector (127.0.0.1 only).")
    p.add_argument("--model_path", default=MINI_CHECKPOINT, help="checkpoint (NPR.pth or ours)")
    add_weights_option(p)
    p.add_argument("--port", type=port, default=7860, help="port on 127.0.0.1")
    p.add_argument("--loadSize", type=size, default=256, help="size for the resize option")
    p.add_argument("--gpu_ids", type=gpu_ids, default="0", help="CUDA device id; -1 for the CPU")
    return p


def serve(app, port, **kwargs):
    """Launch the page on 127.0.0.1 only, with the upload limits (``MAX_UPLOAD`` per file, and
    ``demo_limits.RequestLimits`` on every request body)."""
    from starlette.middleware import Middleware

    from demo_limits import RequestLimits
    # System fonts only: gradio's default theme would fetch its fonts from Google Fonts.
    theme = gradio().themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                    font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
    return app.launch(server_name="127.0.0.1", server_port=port, share=False, theme=theme,
                      max_file_size=MAX_UPLOAD, app_kwargs={"middleware": [Middleware(RequestLimits)]}, **kwargs)


def check_port(number):
    """One line, before the model loads, when 127.0.0.1:``number`` cannot be served (another
    server holds it, or it needs privileges); the web framework would raise from deep inside."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closed one's port is free
        try:
            s.bind(("127.0.0.1", number))
        except OSError as e:
            raise UserError(f"--port {number}: 127.0.0.1:{number} cannot be served ({e.strerror or e}; another demo "
                            "or server?); choose another --port") from None


def load_model(model_path, gpu_ids="0", ema=False):
    """(the prepared model, its stored threshold or None); one line when there is no checkpoint."""
    require_checkpoint(model_path, "--model_path", "run `python train.py` first, or pass --model_path"
                       if model_path == MINI_CHECKPOINT else "")
    device = select_device(gpu_ids)
    set_numerics()
    return load_for_evaluation(model_path, device, ema)[:2]


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    keep_freed_memory()  # glibc keeps freed memory for the next batch (docs/speed.md)
    gradio()  # the extra packages, before the port and the model
    check_port(args.port)
    model, stored = load_model(args.model_path, args.gpu_ids, args.ema_weights)
    app = build_app(model, stored, args.model_path, args.loadSize)
    print(f"Serving on http://127.0.0.1:{args.port} (Ctrl-C stops it)")
    serve(app, args.port)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
