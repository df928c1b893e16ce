"""Live classification with a pybnn model: camera, video file or images in, top prediction out.

    python examples/webcam_demo.py                                 # camera 0, window
    python examples/webcam_demo.py --headless --source clip.avi    # a video file, terminal
    python examples/webcam_demo.py --headless --source 'photos/*.png' --model my.bin

Each frame is captured (picamera2 on a Raspberry Pi where it is installed, else OpenCV; a
folder or glob of images needs only Pillow), center-cropped to the model input's aspect
ratio, resized and converted as that input says (grayscale for 1 channel, RGB for 3; float32
inputs get pixel / 255, uint8 inputs the pixels, int8 inputs pixel / 255 quantized with the
input's scale and zero point), and classified.  The top class, its probability, the
milliseconds of preprocessing + inference and the frames per second (over the last second,
capture included) go on the frame in a window, or on the terminal with --headless, one line
per frame, then a summary.

The default model is examples/digits/digits.bin (8x8 grayscale digits written light on dark,
like scikit-learn's; use --invert for dark ink on white paper).  --model takes any pybnn
model file whose output is a vector of class scores; --labels names its classes.
Camera and video sources need OpenCV: `pip install "pybnn[camera]"`, or on Raspberry Pi OS
`sudo apt install python3-opencv` (and python3-picamera2 for the camera module).
"""
import argparse
import collections
import glob
import os
import sys
import time

import numpy as np
from PIL import Image

import pybnn

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class SourceError(Exception):
    """A source that cannot be opened or read (message for the user)."""


def _cv2(what):
    try:
        import cv2
    except ImportError:
        raise SourceError(f"{what} needs OpenCV: pip install \"pybnn[camera]\" "
                          f"(or on Raspberry Pi OS: sudo apt install python3-opencv)") from None
    return cv2


def image_frames(paths):
    """RGB uint8 frames from image files (Pillow only)."""
    for path in paths:
        try:
            with Image.open(path) as im:
                yield np.asarray(im.convert("RGB"))
        except OSError as e:
            raise SourceError(f"cannot read image {path}: {e}") from None


def opencv_frames(source, what):
    """RGB uint8 frames from cv2.VideoCapture(source) (a camera index or a video file)."""
    cv2 = _cv2(what)
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise SourceError(f"OpenCV cannot open {what}")
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield np.ascontiguousarray(bgr[..., ::-1]) if bgr.ndim == 3 else bgr
    finally:
        cap.release()


def picamera_frames(size=(640, 480)):
    """RGB uint8 frames from the Raspberry Pi camera (libcamera through picamera2)."""
    from picamera2 import Picamera2
    cam = Picamera2()
    cam.configure(cam.create_preview_configuration(main={"format": "RGB888", "size": size}))
    cam.start()
    try:
        while True:
            yield np.ascontiguousarray(cam.capture_array()[..., ::-1])  # RGB888 is stored B, G, R
    finally:
        cam.stop()


def open_source(source, camera="auto"):
    """Frames (an iterator of RGB uint8 arrays) from a camera index, a video file, a folder of
    images or a glob pattern."""
    if source.isdigit():
        if camera in ("auto", "picamera2") and int(source) == 0:
            try:
                import picamera2  # noqa: F401  (installed on Raspberry Pi OS with the camera stack)
                return picamera_frames()
            except ImportError:
                if camera == "picamera2":
                    raise SourceError("picamera2 is not installed (sudo apt install python3-picamera2)") from None
        return opencv_frames(int(source), f"camera {source}")
    if os.path.isdir(source):
        paths = sorted(p for p in glob.glob(os.path.join(source, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
        if not paths:
            raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {source}")
        return image_frames(paths)
    if os.path.isfile(source):
        if source.lower().endswith(IMAGE_EXTENSIONS):
            return image_frames([source])
        return opencv_frames(source, f"video file {source}")
    paths = sorted(glob.glob(source))
    if not paths:
        raise SourceError(f"{source!r} is not a camera index, file, folder or matching glob pattern")
    return image_frames(paths)


class Preprocessor:
    """RGB uint8 frame -> one input of the model, as its Input layer says."""

    def __init__(self, model, invert=False):
        spec = model.layers[0]
        if len(spec.shape) != 3 or spec.shape[2] not in (1, 3):
            raise SystemExit(f"webcam_demo: the model's input must be an image (H, W, 1 or 3), got {spec.shape}")
        self.h, self.w, self.c = spec.shape
        self.dtype, self.scale, self.zero_point = spec.dtype, spec.scale, spec.zero_point
        self.invert = invert

    def __call__(self, frame):
        # center crop to the input's aspect ratio, so the object is not stretched (before PIL
        # copies it: only the crop is converted)
        fh, fw = frame.shape[:2]
        cw, ch = (fw, round(fw * self.h / self.w)) if fw * self.h <= fh * self.w else (round(fh * self.w / self.h), fh)
        left, top = (fw - cw) // 2, (fh - ch) // 2
        im = Image.fromarray(np.ascontiguousarray(frame[top:top + ch, left:left + cw]))
        im = im.convert("L" if self.c == 1 else "RGB")
        pixels = np.asarray(im.resize((self.w, self.h), Image.BILINEAR), dtype=np.uint8).reshape(self.h, self.w, self.c)
        if self.invert:
            pixels = 255 - pixels
        if self.dtype == "uint8":
            return pixels
        x = pixels.astype(np.float32) / np.float32(255)
        if self.dtype == "float32":
            return x
        return pybnn.reference.quantize(x, self.scale, self.zero_point)


def probabilities(scores):
    """The model's output as probabilities (a softmax unless it already is one)."""
    scores = scores.astype(np.float64).ravel()
    if scores.min() >= 0 and abs(scores.sum() - 1) < 1e-3:
        return scores
    e = np.exp(scores - scores.max())
    return e / e.sum()


def draw(cv2, frame, text_lines):
    """BGR copy of the frame, enlarged when small, with the lines written on it."""
    bgr = np.ascontiguousarray(frame[..., ::-1])
    if bgr.shape[1] < 480:
        scale = 480 // bgr.shape[1] + 1
        bgr = cv2.resize(bgr, (bgr.shape[1] * scale, bgr.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    for i, line in enumerate(text_lines):
        y = 30 + 30 * i
        cv2.putText(bgr, line, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(bgr, line, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2, cv2.LINE_AA)
    return bgr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="0",
                        help="camera index, video file, folder of images or glob pattern (default 0)")
    parser.add_argument("--model", default=os.path.join(HERE, "digits", "digits.bin"), help="a pybnn model file")
    parser.add_argument("--labels", help="text file with one class name per line (default: class numbers)")
    parser.add_argument("--headless", action="store_true", help="print to the terminal instead of a window")
    parser.add_argument("--camera", choices=("auto", "picamera2", "opencv"), default="auto",
                        help="for camera 0: picamera2 when installed (auto), or force one")
    parser.add_argument("--invert", action="store_true", help="invert the pixels (dark ink on light paper)")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: at the end)")
    parser.add_argument("--threads", type=int, help="kernel threads (default: the physical cores)")
    args = parser.parse_args(argv)

    try:
        model = pybnn.load_model(args.model)
    except (OSError, pybnn.PyBNNError) as e:
        print(f"webcam_demo: cannot load model {args.model}: {e}", file=sys.stderr)
        return 2
    if args.threads:
        model.num_threads = args.threads
    labels = None
    if args.labels:
        with open(args.labels, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    prep = Preprocessor(model, args.invert)
    cv2 = None if args.headless else _cv2("the window (or use --headless)")
    try:
        frames = open_source(args.source, args.camera)
    except SourceError as e:
        print(f"webcam_demo: {e}", file=sys.stderr)
        return 2
    print(f"model {os.path.basename(args.model)}: input {prep.h}x{prep.w}x{prep.c} {prep.dtype}, "
          f"kernels {pybnn.cpu.get_isa()}, {pybnn.cpu.num_threads() if model.num_threads is None else model.num_threads}"
          f" thread(s); source {args.source}", flush=True)

    recent = collections.deque()  # end times of the frames of the last second, for FPS
    work_ms, count, t_start = [], 0, time.perf_counter()
    try:
        for frame in frames:
            t0 = time.perf_counter()
            p = probabilities(model.predict(prep(frame)[None]))
            now = time.perf_counter()
            ms = (now - t0) * 1e3
            work_ms.append(ms)
            recent.append(now)
            while now - recent[0] > 1.0 and len(recent) > 1:
                recent.popleft()
            elapsed = recent[-1] - recent[0]
            fps = (len(recent) - 1) / elapsed if elapsed > 0 else 1e3 / max(ms, 1e-6)
            top = int(p.argmax())
            name = labels[top] if labels and top < len(labels) else str(top)
            line = f"frame {count}: {name} ({p[top]:.2f})  {ms:.2f} ms  {fps:.1f} FPS"
            if args.headless:
                print(line, flush=True)
            else:
                try:
                    cv2.imshow("pybnn", draw(cv2, frame, [f"{name} ({p[top]:.0%})", f"{ms:.1f} ms  {fps:.1f} FPS"]))
                except cv2.error as e:  # opencv-python-headless, or no display
                    raise SourceError(f"OpenCV cannot open a window ({str(e).strip().splitlines()[-1]}); use "
                                      f"--headless, or an OpenCV with a GUI (opencv-python, python3-opencv) "
                                      f"on a desktop") from None
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            count += 1
            if args.max_frames and count >= args.max_frames:
                break
    except SourceError as e:
        print(f"webcam_demo: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if cv2 is not None:
            try:
                cv2.destroyAllWindows()
            except cv2.error:  # never opened one
                pass
    if not count:
        print(f"webcam_demo: no frames from {args.source}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t_start
    print(f"summary: {count} frames, {np.median(work_ms):.2f} ms per frame (median, preprocessing + "
          f"inference), {count / total:.1f} FPS overall", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
