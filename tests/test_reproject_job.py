"""The reprojection job on local Spark: published days reduced again in a new basis, one
partition and one report per day, against numpy on each day's rows."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spark_jobs import basis, pca, report, reproject
from spark_jobs.pca_math import Moments, PcaModel, captured_variance
from tests.support.pca_data import WEIGHTS_A, WEIGHTS_B, synthetic_vectors, write_features

pytestmark = pytest.mark.slow
NEW_BASIS = "basis-20260201T020000Z-0000aaaa"
OLD_BASIS = "basis-20260101T020000Z-00000001"
# day -> (rows, distribution, draw): the third day is of other uploads than the fit.
DAYS = {"2026-01-01": (120, 0, 1), "2026-01-02": (80, 0, 2), "2026-01-03": (150, 1, 3)}
SAMPLE_ROWS = 100  # the scatter's cap, lowered so that two of the days exceed it


def reproject_argv(lake, days, *extra: str) -> list[str]:
    return ["--basis", str(lake / "models" / "pca" / NEW_BASIS),
            "--input", *[str(lake / "features" / f"dt={day}") for day in days],
            "--days", *days, "--output", str(lake / "refit" / "reduced"),
            "--report", str(lake / "refit" / "reports"), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """Three published days, a basis fitted on the first two, the daily report of the first."""
    lake = tmp_path_factory.mktemp("lake")
    vectors = {}
    for day, (rows, distribution, draw) in DAYS.items():
        vectors[day], labels = synthetic_vectors(rows, distribution=distribution, draw=draw)
        write_features(lake / "features" / f"dt={day}", vectors[day], labels, WEIGHTS_A)
    pca.run(spark, pca.parse_args([
        "--input", str(lake / "features" / "dt=2026-01-01"),
        str(lake / "features" / "dt=2026-01-02"), "--fit-basis",
        str(lake / "models" / "pca" / NEW_BASIS), "--variance", "0.9",
        "--days", "2026-01-01", "2026-01-02",
    ]))  # fmt: skip
    daily = lake / "reports" / "dt=2026-01-01"
    daily.mkdir(parents=True)
    (daily / "manifest.json").write_text(json.dumps({
        "basis": OLD_BASIS, "k": 9, "explained_variance": 0.5, "mode": "apply", "rows": 120,
        "featurize": {"images_found": 121, "featurized": 120, "errors": 1},
        "weights": WEIGHTS_A, "timings_s": {"total": 3.0},
    }))  # fmt: skip
    return lake, vectors


@pytest.fixture(scope="module")
def reprojected(spark, lake):
    root, _ = lake
    drawn = []  # (points, rows) of each scatter drawn
    original = report.scatter_png
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pca, "SCATTER_SAMPLE_ROWS", SAMPLE_ROWS)
        patch.setattr(
            report,
            "scatter_png",
            lambda points, labels, rows: (
                drawn.append((len(points), rows)),
                original(points, labels, rows),
            )[1],
        )
        args = reproject.parse_args(
            reproject_argv(root, list(DAYS), "--previous-report", str(root / "reports"))
        )
        summary = reproject.run(spark, args)
    return summary, drawn


def saved_basis(root) -> tuple[PcaModel, dict]:
    folder = root / "models" / "pca" / NEW_BASIS
    model = PcaModel.from_dict(json.loads((folder / basis.MODEL_FILE).read_text()))
    return model, json.loads((folder / basis.MANIFEST_FILE).read_text())


def test_one_partition_per_day_with_the_daily_columns(spark, lake, reprojected):
    root, _ = lake
    output = root / "refit" / "reduced"
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == [f"dt={d}" for d in DAYS]
    daily_schema = spark.createDataFrame([], pca.REDUCED_SCHEMA).schema
    for day in DAYS:
        files = list((output / f"dt={day}").glob("*.parquet"))
        assert files
        for file in files:
            # The day is the folder, not a column of the files.
            assert pq.read_schema(file).names == ["path", "label", "pca_features", "basis"]
            assert pq.read_schema(file).field("pca_features").type == pa.list_(pa.float32())
        read = spark.read.parquet(str(output / f"dt={day}")).schema
        assert [(f.name, f.dataType) for f in read] == [(f.name, f.dataType) for f in daily_schema]


def test_counts_per_day(lake, reprojected):
    root, vectors = lake
    summary, _ = reprojected
    assert summary["rows"] == {day: len(rows) for day, rows in vectors.items()}
    for day, rows in vectors.items():
        assert pq.read_table(root / "refit" / "reduced" / f"dt={day}").num_rows == len(rows)


def test_vectors_are_the_basis_projection_of_each_row(lake, reprojected):
    root, vectors = lake
    model, _ = saved_basis(root)
    for day, rows in vectors.items():
        table = pq.read_table(root / "refit" / "reduced" / f"dt={day}").to_pandas()
        assert set(table["basis"]) == {NEW_BASIS}
        by_path = dict(zip(table["path"], table["pca_features"], strict=True))
        expected = model.transform(rows)
        for i in range(len(rows)):
            got = by_path[f"file:/raw/class {i % 5}/{i}.jpg"]
            assert len(got) == model.k
            np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-5)


def test_captured_share_per_day_equals_captured_variance(lake, reprojected):
    root, vectors = lake
    summary, _ = reprojected
    model, _ = saved_basis(root)
    for day, rows in vectors.items():
        expected = captured_variance(model, Moments.of(rows))
        assert summary["explained_variance"][day] == pytest.approx(expected, rel=1e-9)
        written = root / "refit" / "reports" / f"dt={day}" / "manifest.json"
        assert json.loads(written.read_text())["explained_variance"] == pytest.approx(
            summary["explained_variance"][day], rel=1e-15
        )
    shares = summary["explained_variance"]
    print(f"captured shares: {shares}")
    assert shares["2026-01-03"] < shares["2026-01-01"] - 0.5  # other uploads than the fit


def test_manifests_start_from_the_previous_report(lake, reprojected):
    root, vectors = lake
    _, fitted = saved_basis(root)
    reports = root / "refit" / "reports"
    merged = json.loads((reports / "dt=2026-01-01" / "manifest.json").read_text())
    # Kept from the daily run's manifest.
    assert merged["featurize"] == {"images_found": 121, "featurized": 120, "errors": 1}
    assert merged["weights"] == WEIGHTS_A and merged["timings_s"] == {"total": 3.0}
    # Replaced.
    assert (merged["basis"], merged["k"], merged["rows"]) == (NEW_BASIS, fitted["k"], 120)
    assert merged["explained_variance_at_fit"] == fitted["explained_variance"]
    assert merged["basis_fit_on"] == {"days": ["2026-01-01", "2026-01-02"], "rows": 200}
    assert merged["basis_uri"] == str(root / "models" / "pca" / NEW_BASIS)
    assert (merged["mode"], merged["previous_basis"]) == ("reprojected", OLD_BASIS)
    assert datetime.fromisoformat(merged["reprojected_at"]).tzinfo is not None
    # A day without a previous report.
    fresh = json.loads((reports / "dt=2026-01-03" / "manifest.json").read_text())
    assert (fresh["mode"], fresh["previous_basis"], fresh["rows"]) == ("reprojected", None, 150)
    assert "featurize" not in fresh


def test_report_images_per_day(lake, reprojected):
    root, _ = lake
    _, drawn = reprojected
    for day in DAYS:
        for name in ("explained_variance.png", "pca_scatter.png"):
            with Image.open(root / "refit" / "reports" / f"dt={day}" / name) as image:
                assert image.format == "PNG" and image.size[0] > 300
    # At most SCATTER_SAMPLE_ROWS points a day, out of the day's rows.
    assert sorted(rows for _, rows in drawn) == [80, 120, 150]
    assert all(points <= min(rows, SAMPLE_ROWS) for points, rows in drawn)
    assert (80, 80) in drawn


def test_a_day_of_other_weights_is_refused_naming_it(spark, lake, tmp_path):
    root, _ = lake
    vectors, labels = synthetic_vectors(20, draw=7)
    write_features(tmp_path / "features" / "dt=2026-01-04", vectors, labels, WEIGHTS_B)
    argv = reproject_argv(tmp_path, ["2026-01-04"])
    argv[1] = str(root / "models" / "pca" / NEW_BASIS)
    with pytest.raises(basis.WeightsMismatch, match=r"day 2026-01-04 .*/b\.h5.*/a\.h5"):
        reproject.run(spark, reproject.parse_args(argv))
    assert not (tmp_path / "refit").exists()


def test_a_day_without_rows_is_refused_naming_it(spark, lake, tmp_path):
    root, _ = lake
    empty = tmp_path / "features" / "dt=2026-01-05"
    empty.mkdir(parents=True)
    schema = pa.schema([("path", pa.string()), ("label", pa.string()),
                        ("features", pa.list_(pa.float32()))])  # fmt: skip
    pq.write_table(schema.empty_table(), empty / "part-0.parquet")
    (empty / "_featurize.json").write_text(json.dumps({"weights": WEIGHTS_A}))
    argv = reproject_argv(root, ["2026-01-01"])
    argv[argv.index("--input") + 1] = str(empty)
    argv[argv.index("--days") + 1] = "2026-01-05"
    argv[argv.index("--output") + 1] = str(tmp_path / "reduced")
    argv[argv.index("--report") + 1] = str(tmp_path / "reports")
    with pytest.raises(ValueError, match="day 2026-01-05 .* has 0$"):
        reproject.run(spark, reproject.parse_args(argv))
    assert not (tmp_path / "reduced").exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "days, inputs, message",
    [
        (["2026-01-01"], ["2026-01-01", "2026-01-02"], "--input gives 2 URIs and --days 1 days"),
        (["2026-01-01", "2026-01-02"], ["2026-01-01"], "--input gives 1 URIs and --days 2 days"),
        (["2026-1-1"], ["2026-1-1"], "'2026-1-1' is not a date written YYYY-MM-DD"),
        (["2026-W01-1"], ["2026-W01-1"], "is not a date written YYYY-MM-DD"),
        (["2026-02-30"], ["2026-02-30"], "is not a date written YYYY-MM-DD"),
        (["2026-01-01"] * 2, ["2026-01-01"] * 2, "names 2026-01-01 more than once"),
        # The inputs are the days' folders, in the order of --days, of one table.
        (["2026-01-01", "2026-01-02"], ["2026-01-02", "2026-01-01"],
         "lake/features/dt=2026-01-02 is not the folder dt=2026-01-01 of day 2026-01-01"),
        (["2026-01-01"], ["other"], "--input lake/features/other is not the folder dt=2026-01-01"),
        (["2026-01-01", "2026-01-02"], ["2026-01-01", "../reduced/dt=2026-01-02"],
         "the days are folders of one table, not of lake/features, lake/features/../reduced"),
    ],
)
def test_bad_arguments_are_parse_errors(days, inputs, message, capsys):
    folders = [f"lake/features/{name if '/' in name or name == 'other' else 'dt=' + name}"
               for name in inputs]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        reproject.parse_args(["--basis", f"m/{NEW_BASIS}", "--input", *folders, "--days", *days,
                              "--output", "o", "--report", "r"])  # fmt: skip
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_parsed_arguments():
    args = reproject.parse_args([
        "--basis", f"s3://lake/models/pca/{NEW_BASIS}", "--input",
        "s3://lake/features/dt=2026-01-02", "s3://lake/features/dt=2026-01-01/",
        "--days", "2026-01-02", "2026-01-01", "--output", "o", "--report", "r",
    ])  # fmt: skip
    assert args.days == ["2026-01-02", "2026-01-01"] and args.previous_report is None
    assert reproject.table_of(args.input[1]) == "s3://lake/features"


def test_the_basis_folder_ends_in_a_basis_id(capsys):
    with pytest.raises(SystemExit):
        reproject.parse_args(["--basis", "models/pca", "--input", "f/dt=2026-01-01", "--days",
                              "2026-01-01", "--output", "o", "--report", "r"])  # fmt: skip
    assert "not a basis id" in capsys.readouterr().err
