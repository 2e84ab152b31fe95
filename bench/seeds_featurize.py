"""The seeds' featurization, reimplemented faithfully as the benchmark's baseline (a).

As in the original notebook: Spark `binaryFile`, the model's weights broadcast from the driver,
a scalar-iterator pandas UDF that rebuilds the model once per task from the broadcast weights,
Pillow decode and resize to 224x224, Keras `preprocess_input`, then Keras `model.predict` on each
Arrow batch. Only the weights file differs: the notebook downloaded ImageNet weights, this
machine has them in ../shared.

    python -m bench.seeds_featurize --input ROOT --output URI --weights FILE
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd


def model_fn(weights):
    from tensorflow.keras.applications.mobilenet_v2 import MobileNetV2

    model = MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=None, pooling="avg")
    model.set_weights(weights)
    return model


def preprocess(content: bytes) -> np.ndarray:
    from PIL import Image
    from tensorflow.keras.applications.mobilenet_v2 import preprocess_input
    from tensorflow.keras.preprocessing.image import img_to_array

    image = Image.open(io.BytesIO(content)).resize([224, 224])
    return preprocess_input(img_to_array(image))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--weights", required=True)
    args = parser.parse_args(argv)

    from pyspark.sql.functions import col, element_at, pandas_udf, split

    from spark_jobs.session import spark_session

    started = time.time()
    spark = spark_session("seeds-featurize")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "1024")
    images = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "*.jpg")
        .option("recursiveFileLookup", "true")
        .load(args.input)
        .withColumn("label", element_at(split(col("path"), "/"), -2))
    )
    keras_model = model_fn_local(args.weights)
    broadcast_weights = spark.sparkContext.broadcast(keras_model.get_weights())

    @pandas_udf("array<float>")
    def featurize_udf(content_series_iter: Iterator[pd.Series]) -> Iterator[pd.Series]:
        model = model_fn(broadcast_weights.value)
        for content_series in content_series_iter:
            batch = np.stack(content_series.map(preprocess))
            predictions = model.predict(batch, verbose=0)
            yield pd.Series([p.flatten() for p in predictions])

    ready = time.time()
    images.select("path", "label", featurize_udf("content").alias("features")).write.mode(
        "overwrite"
    ).parquet(args.output)
    finished = time.time()
    count = spark.read.parquet(args.output).count()
    spark.stop()
    print(
        json.dumps(
            {"images": count, "processing_s": finished - ready, "total_s": finished - started}
        )
    )
    return 0


def model_fn_local(weights_path: str):
    from tensorflow.keras.applications.mobilenet_v2 import MobileNetV2

    model = MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=None, pooling="avg")
    model.load_weights(weights_path)
    return model


if __name__ == "__main__":
    sys.exit(main())
