"""Model loading: the one place that turns a weights choice into MobileNetV2 features.

The driver resolves the weights, builds the Keras model once and converts it to a TensorFlow Lite
flatbuffer; executors receive those bytes and run them with LiteRT's interpreter (XNNPACK),
one interpreter per Python worker, cached across tasks and batches. TFLite runs this model much
faster than Keras `predict_on_batch` on CPU, with the same features up to float rounding (`make
bench` measures both), and building the model once on the driver gives every executor the same
weights, random ones included.

TensorFlow is imported inside functions only: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spark_jobs.images import to_model_scale

FEATURE_DIM = 1280
INPUT_SHAPE = (224, 224, 3)
# Images per interpreter call. Small batches keep the activations in each core's cache, so
# single-threaded interpreters side by side, as the featurize job runs them, go faster with
# fewer images a call (`make bench-batch`); 2 is as fast as 1 in the job and is the
# one-process ceiling's best in `make bench`.
MODEL_BATCH_SIZE = 2
RANDOM_WEIGHTS_SEED = 0
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
WEIGHTS_ALTERNATIVES = (
    "a local path or s3:// URI of a Keras .weights.h5 file of MobileNetV2 (alpha 1.0, 224, no "
    "top), for example ../shared/models/mobilenet_v2_1.0_224_imagenet_notop.weights.h5, or "
    "'random' for random weights (smoke tests only: the features mean nothing)"
)


class WeightsUnavailable(RuntimeError):
    """The weights asked for cannot be had; the message names the alternatives."""


@dataclass(frozen=True)
class Weights:
    """The weights a run actually used, recorded with its output."""

    source: str  # as asked: imagenet | random | a path | a URI
    path: str | None  # the local file loaded; None for random weights
    sha256: str | None

    def as_record(self) -> dict[str, str | None]:
        return asdict(self)

    @property
    def cache_key(self) -> str:
        digest = self.sha256 or f"random-seed{RANDOM_WEIGHTS_SEED}"
        return digest[:24]


def file_sha256(path: str | Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def resolve_weights(source: str, fetch: Callable[[str, str], None] | None = None) -> Weights:
    """Find the weights file for `source`; `fetch(uri, local_path)` copies a remote file.

    Only an explicit `random` gives random weights: a missing file or a failed ImageNet download
    is an error, never a silent fallback.
    """
    if source == "random":
        return Weights(source, None, None)
    if source == "imagenet":
        path = _download_imagenet_weights()
    elif "://" in source:
        if fetch is None:
            raise WeightsUnavailable(f"--weights {source}: no way to fetch remote weights here")
        path = os.path.join(tempfile.mkdtemp(prefix="fruits-weights-"), Path(source).name)
        try:
            fetch(source, path)
        except Exception as exc:
            raise WeightsUnavailable(f"--weights {source}: cannot fetch it: {exc}") from exc
    else:
        path = source
    if not os.path.isfile(path):
        raise WeightsUnavailable(
            f"--weights {source}: no such file. Give {WEIGHTS_ALTERNATIVES}, or 'imagenet'."
        )
    if not path.endswith(".h5"):
        raise WeightsUnavailable(f"--weights {source}: expected a Keras .weights.h5 (or .h5) file")
    return Weights(source, str(path), file_sha256(path))


def _download_imagenet_weights() -> str:
    """The ImageNet weights from Keras's cache, downloading them as Keras itself would."""
    import keras
    from keras.src.applications.mobilenet_v2 import BASE_WEIGHT_PATH

    try:
        return keras.utils.get_file(
            IMAGENET_FILE, BASE_WEIGHT_PATH + IMAGENET_FILE, cache_subdir="models"
        )
    except Exception as exc:
        raise WeightsUnavailable(
            f"--weights imagenet: the ImageNet weights are not in Keras's cache and cannot be "
            f"downloaded ({type(exc).__name__}: {exc}). Give {WEIGHTS_ALTERNATIVES}."
        ) from exc


def build_keras_model(weights: Weights):
    """Plain Keras MobileNetV2 without its top, global average pooling: 1280 features."""
    import keras

    if weights.path is None:
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)
    model = keras.applications.MobileNetV2(
        input_shape=INPUT_SHAPE, include_top=False, weights=None, pooling="avg"
    )
    if weights.path is not None:
        try:
            model.load_weights(weights.path)
        except Exception as exc:
            raise WeightsUnavailable(
                f"--weights {weights.source}: not MobileNetV2 (alpha 1.0, 224, no top) "
                f"weights: {type(exc).__name__}: {exc}"
            ) from exc
    return model


def tflite_cache_name(weights: Weights) -> str:
    """File name of a conversion: the weights' digest and the TensorFlow version that made it."""
    return f"mobilenet_v2-{weights.cache_key}-tf{tensorflow_version()}.tflite"


def tensorflow_version() -> str:
    """The installed TensorFlow's version, read from package metadata: importing TensorFlow
    takes seconds, and a cache hit needs nothing else from it."""
    from importlib import metadata

    for distribution in ("tensorflow", "tensorflow-cpu", "tensorflow_cpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    import tensorflow as tf

    return tf.__version__


def tflite_model(
    weights: Weights,
    *,
    read_cached: Callable[[str], bytes | None] | None = None,
    write_cached: Callable[[str, bytes], None] | None = None,
) -> bytes:
    """The TFLite flatbuffer of the model, converted once per weights and TensorFlow version.

    The cache is a local folder by default (FRUITS_MODEL_CACHE); the featurize job passes a
    lake folder instead, so transient clusters do not convert again on every run.
    """
    if read_cached is None or write_cached is None:
        read_cached, write_cached = _local_cache()
    name = tflite_cache_name(weights)
    cached = read_cached(name)
    if cached:
        return cached
    import tensorflow as tf

    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(build_keras_model(weights)).convert()
    write_cached(name, flatbuffer)
    return flatbuffer


def _local_cache() -> tuple[Callable[[str], bytes | None], Callable[[str, bytes], None]]:
    folder = Path(os.environ.get("FRUITS_MODEL_CACHE") or _default_cache_dir())

    def read(name: str) -> bytes | None:
        path = folder / name
        return path.read_bytes() if path.is_file() else None

    def write(name: str, data: bytes) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.{os.getpid()}.partial"
        partial.write_bytes(data)
        os.replace(partial, folder / name)

    return read, write


def _default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "fruits-features")


class Featurizer:
    """A TFLite interpreter of the model: (n, 224, 224, 3) images in, (n, 1280) features out.

    Images are either model input (float32, already scaled) or uint8 pixels from
    `images.pixels`, which are scaled straight into the interpreter's input tensor: a float
    batch in between, then copied into the tensor, would cost a copy of every image.

    The interpreter is LiteRT's (`ai-edge-litert`), the runtime `tf.lite.Interpreter` is
    deprecated for and the same code: outputs are identical, and a worker imports it in a
    fraction of the time and memory `import tensorflow` takes. Only a driver converting the model
    imports TensorFlow. XNNPACK runs `threads` threads; nothing else in the worker spins up pools.
    """

    def __init__(self, flatbuffer: bytes, threads: int, batch_size: int = MODEL_BATCH_SIZE):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = 0
        self.threads = threads
        self.batch_size = batch_size

    def __call__(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Features of `images`, `batch_size` images per model call whatever their number."""
        features = np.empty((len(images), FEATURE_DIM), np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            features[start : start + len(chunk)] = self._invoke(chunk)
        return features

    def _invoke(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        if len(images) != self._batch:
            self._interpreter.resize_tensor_input(self._input, [len(images), *INPUT_SHAPE])
            self._interpreter.allocate_tensors()
            self._batch = len(images)
        # A view of the interpreter's own input buffer; it must be gone before invoke().
        model_input = self._interpreter.tensor(self._input)()
        for position, image in enumerate(images):
            if image.dtype == np.uint8:
                to_model_scale(image, out=model_input[position])
            else:
                model_input[position] = image
        del model_input
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)


_featurizers: dict[tuple[str, int, int], Featurizer] = {}
_featurizers_lock = threading.Lock()


def cached_featurizer(
    key: str, flatbuffer: Callable[[], bytes], threads: int, batch_size: int = MODEL_BATCH_SIZE
) -> Featurizer:
    """One Featurizer per Python worker and model: Spark reuses workers across tasks."""
    with _featurizers_lock:
        featurizer = _featurizers.get((key, threads, batch_size))
        if featurizer is None:
            featurizer = Featurizer(flatbuffer(), threads, batch_size)
            _featurizers[(key, threads, batch_size)] = featurizer
        return featurizer
