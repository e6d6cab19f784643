"""What `foedus ops` reads: CSV and .npz metrics, labels, the model's columns, the resource columns."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from foedus.client_sdk.cli.ops import load_labels, load_matrix, model_columns
from foedus.client_sdk.errors import InvalidArgument

BITBRAINS_HEADER = [
    "Timestamp [ms]",
    "CPU cores",
    "CPU capacity provisioned [MHZ]",
    "CPU usage [MHZ]",
    "CPU usage [%]",
    "Memory capacity provisioned [KB]",
    "Memory usage [KB]",
    "Disk read throughput [KB/s]",
    "Disk write throughput [KB/s]",
    "Network received throughput [KB/s]",
    "Network transmitted throughput [KB/s]",
]


def test_a_bitbrains_trace_reads_with_its_semicolon_and_tab(tmp_path: Path) -> None:
    path = tmp_path / "1.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(";\t".join(BITBRAINS_HEADER) + "\n")
        f.write(
            "1372629804;\t2;\t5851.9989;\t87.78;\t1.5;\t8218624.0;\t1034592.8;\t160.8;\t21.7;\t0.26;\t1.46\n"
        )
        f.write("1372630104;\t2;\t5851.9989;\t29.26;\t0.5;\t8218624.0;\t458575.4;\t0.0;\t2.3;\t0.2;\t1.0\n")
    x, names = load_matrix(path)
    assert names == BITBRAINS_HEADER
    assert x.shape == (2, 11) and x[1, 4] == 0.5


def test_a_text_column_is_skipped_and_a_blank_line_ignored(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("when,a,b\n2024-01-01,1,2\n\n2024-01-02,3,4\n")
    x, names = load_matrix(path)
    assert names == ["a", "b"]
    np.testing.assert_array_equal(x, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,a\n1,2,3\n", r"'a' appear more than once in the header"),
        (" a ,b,a\n1,2,3\n", r"'a' appear more than once in the header"),
        ("a,b\n1,2\n3\n", r"m\.csv, line 3: 1 fields, but the header has 2"),
        ("a,b\n1,2\n3,4\n\n5,6,7\n", r"m\.csv, line 5: 3 fields"),
        ("a,b\n1,\n3,4\n", r"m\.csv, line 2, column 2 \('b'\) is empty"),
        ("a,b\n1,2\nx,4\n", r"m\.csv, line 3, column 1 \('a'\) holds 'x', not a finite number"),
        ("a,b\n1,2\nnan,4\n", r"m\.csv, line 3, column 1 \('a'\) holds 'nan'"),
        ("a,b\n", r"m\.csv has a header but no rows"),
        ("", r"m\.csv is empty"),
        ("a,b\nx,y\n", r"m\.csv has no numeric column"),
    ],
)
def test_a_csv_with_holes_is_refused_where_they_are(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        load_matrix(path)


def test_a_npz_that_is_not_one_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "text.npz"
    text.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidArgument, match=r"cannot read .*text\.npz: not a NumPy \.npz archive"):
        load_matrix(text)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros((3, 2)))
    with pytest.raises(InvalidArgument, match=r"a single NumPy array \(\.npy\)"):
        load_matrix(single)
    strings = tmp_path / "strings.npz"
    np.savez(strings, train=np.array([["a", "b"]]))
    with pytest.raises(InvalidArgument, match="does not hold numbers"):
        load_matrix(strings)


def test_the_models_columns_are_taken_by_name_when_the_data_has_names(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    names = ["a", "b", "c", "d"]
    meta = {"foedus.features": "d,b"}
    model, data = tmp_path / "m.onnx", tmp_path / "d.csv"
    np.testing.assert_array_equal(model_columns(x, names, True, meta, model, data), x[:, [3, 1]])
    # no names in the data (a .npz), none in the model, or the model's were positional: as is
    assert model_columns(x, names, False, meta, model, data) is x
    assert model_columns(x, names, True, {}, model, data) is x
    assert model_columns(x, names, True, {"foedus.features": "m0,m1,m2,m3"}, model, data) is x
    with pytest.raises(InvalidArgument, match=r"d\.csv lacks the metric\(s\) e, f that .*m\.onnx takes"):
        model_columns(x, names, True, {"foedus.features": "a,e,f"}, model, data)


def test_labels_are_zero_or_one(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n2,1\n3,0.5\n")
    np.savez(tmp_path / "flags.npz", test_label=np.array([True, False, True]))
    np.testing.assert_array_equal(load_labels(data, tmp_path / "flags.npz", "", 3), [1, 0, 1])
    with pytest.raises(InvalidArgument, match=r"column label of .*must be 0 or 1.*row 2 \(from 0\) is 0\.5"):
        load_labels(data, None, "label", 3)
    (tmp_path / "l.txt").write_text("0\n1\n-1\n")
    with pytest.raises(InvalidArgument, match=r"l\.txt must be 0 or 1"):
        load_labels(data, tmp_path / "l.txt", "", 3)
    (tmp_path / "h.txt").write_text("label\n0\n1\n1\n")
    with pytest.raises(InvalidArgument, match=r"cannot read labels from .*h\.txt"):
        load_labels(data, tmp_path / "h.txt", "", 3)
    np.savez(tmp_path / "arrays.npz", train=np.zeros(3), test=np.zeros(3))
    with pytest.raises(InvalidArgument, match=r"no array 'test_label' \(it holds train, test\)"):
        load_labels(data, tmp_path / "arrays.npz", "", 3)


def test_resource_columns_are_usage_not_capacity_nor_time() -> None:
    pytest.importorskip("torch")
    from foedus.federation.resources import resource_columns

    names = BITBRAINS_HEADER
    cpu, memory, loads = resource_columns(names)
    assert (names[cpu], names[memory]) == ("CPU usage [%]", "Memory usage [KB]")
    assert [names[i] for i in loads] == names[7:]  # disk and network: not the timestamp, nor capacities
    cpu, memory, loads = resource_columns(
        names, cpu_column="CPU usage [MHZ]", memory_column="Memory usage [KB]"
    )
    assert (names[cpu], names[memory], len(loads)) == ("CPU usage [MHZ]", "Memory usage [KB]", 4)

    other = ["time", "date", "cpu_util", "mem_used", "response_time_ms", "requests"]
    cpu, memory, loads = resource_columns(other)
    assert (other[cpu], other[memory]) == ("cpu_util", "mem_used")
    assert [other[i] for i in loads] == ["response_time_ms", "requests"]

    with pytest.raises(ValueError, match=r"CPU cores, CPU capacity provisioned \[MHZ\] hold capacity"):
        resource_columns(
            ["Timestamp [ms]", "CPU cores", "CPU capacity provisioned [MHZ]", "Memory usage [KB]"]
        )
    with pytest.raises(ValueError, match="no column 'RAM'"):
        resource_columns(names, memory_column="RAM")
    with pytest.raises(ValueError, match="both 'CPU usage"):
        resource_columns(names, cpu_column="CPU usage [%]", memory_column="CPU usage [%]")
