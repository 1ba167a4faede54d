use super::*;
use crate::testutil::{TinySpec, tiny_model_bytes};

fn small() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()));
    w.meta("answer", Value::U32(42));
    w.meta(
        "list",
        Value::Array(ValueType::I16, vec![Value::I16(-1), Value::I16(7)]),
    );
    let vals: Vec<f32> = (0..64).map(|i| i as f32 / 8.0).collect();
    w.tensor(WriterTensor::new(
        "a",
        vec![32, 2],
        GgmlType::Q8_0,
        quantize_row(GgmlType::Q8_0, &vals).unwrap(),
    ));
    w.tensor(WriterTensor::new(
        "b",
        vec![4],
        GgmlType::F32,
        quantize_row(GgmlType::F32, &vals[..4]).unwrap(),
    ));
    w
}

#[test]
fn writer_and_reader_round_trip_every_value_and_tensor_type() {
    let mut w = GgufWriter::new();
    let values = vec![
        Value::U8(1),
        Value::I8(-2),
        Value::U16(3),
        Value::I16(-4),
        Value::U32(5),
        Value::I32(-6),
        Value::F32(7.5),
        Value::Bool(true),
        Value::String("héllo".into()),
        Value::Array(ValueType::String, vec![Value::String("x".into())]),
        Value::Array(
            ValueType::Array,
            vec![Value::Array(ValueType::U8, vec![Value::U8(9)])],
        ),
        Value::U64(u64::MAX),
        Value::I64(i64::MIN),
        Value::F64(0.25),
    ];
    for (i, v) in values.iter().enumerate() {
        w.meta(format!("k{i}"), v.clone());
    }
    let vals: Vec<f32> = (0..96).map(|i| (i as f32 - 40.0) / 9.0).collect();
    for ty in GgmlType::ALL {
        w.tensor(WriterTensor::new(
            format!("t_{ty}"),
            vec![32, 3],
            ty,
            quantize_row(ty, &vals).unwrap(),
        ));
    }
    for version in [2, 3] {
        w.version = version;
        let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(f.version, version);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(f.get(&format!("k{i}")), Some(v));
        }
        for ty in GgmlType::ALL {
            let t = f.tensor(&format!("t_{ty}")).unwrap();
            assert_eq!((t.ty, t.dims.clone()), (ty, vec![32, 3]));
            assert_eq!(
                f.tensor_data(t),
                quantize_row(ty, &vals).unwrap().as_slice()
            );
            assert_eq!(t.offset % f.alignment, 0);
        }
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = small();
    w.alignment = 64;
    w.meta("general.alignment", Value::U32(64));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.alignment, 64);
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));
}

#[test]
fn every_truncation_of_a_model_fails_cleanly() {
    let bytes = tiny_model_bytes(&TinySpec::new(2, GgmlType::Q4_1));
    assert!(GgufFile::from_bytes(bytes.clone()).is_ok());
    // Every cut in the header/metadata region, then strides through the data.
    let header_end = 20_000.min(bytes.len());
    let cuts = (0..header_end).chain((header_end..bytes.len()).step_by(997));
    for cut in cuts {
        match GgufFile::from_bytes(bytes[..cut].to_vec()) {
            Err(GgufError::Truncated { .. })
            | Err(GgufError::CountTooLarge { .. })
            | Err(GgufError::OutOfRange { .. })
            | Err(GgufError::BadMagic { .. }) => {}
            Err(e) => panic!("cut at {cut}: unexpected error {e}"),
            Ok(_) => panic!("cut at {cut}: truncated file accepted"),
        }
    }
}

#[test]
fn bad_magic_and_version_are_named() {
    let mut b = small().to_bytes();
    b[0] = b'X';
    assert!(matches!(
        GgufFile::from_bytes(b).unwrap_err(),
        GgufError::BadMagic { .. }
    ));
    let mut w = small();
    w.version = 1;
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::UnsupportedVersion(1)
    ));
    w.version = 4;
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::UnsupportedVersion(4)
    ));
}

#[test]
fn tensor_offsets_outside_or_overlapping_the_data_are_rejected() {
    let mut w = small();
    w.tensors[1].offset = Some(1 << 40);
    let e = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(
        matches!(e, GgufError::OutOfRange { ref name, .. } if name == "b"),
        "{e}"
    );

    let mut w = small();
    w.tensors[1].offset = Some(u64::MAX - 31);
    let e = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(matches!(e, GgufError::OutOfRange { .. }), "{e}");

    let mut w = small();
    w.tensors[1].offset = Some(32); // inside tensor a (68 bytes at 0)
    let e = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(
        matches!(e, GgufError::Overlap { ref first, ref second } if first == "a" && second == "b"),
        "{e}"
    );

    let mut w = small();
    w.tensors[1].offset = Some(5);
    let e = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::Misaligned {
                offset: 5,
                alignment: 32,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn huge_dimensions_and_counts_never_allocate() {
    let mut w = small();
    w.tensors[0].dims = vec![u64::MAX, 2];
    let e = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(matches!(e, GgufError::BadShape { .. }), "{e}");

    let mut w = small();
    w.tensors[0].dims = vec![1 << 32, 1 << 20];
    let e = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(matches!(e, GgufError::BadShape { .. }), "{e}");

    let mut w = small();
    w.tensors[0].dims = vec![1 << 20, 1 << 20];
    let e = GgufFile::from_bytes(w.to_bytes()).unwrap_err();
    assert!(
        matches!(e, GgufError::OutOfRange { ref name, .. } if name == "a"),
        "{e}"
    );

    let mut w = small();
    w.tensors[0].dims = vec![32, 0];
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::BadShape { .. }
    ));

    let mut w = small();
    w.tensors[0].dims = vec![32, 1, 1, 1, 1];
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::BadDimCount { n_dims: 5, .. }
    ));

    let mut w = small();
    w.tensors[0].dims = vec![16, 4];
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::NotBlockMultiple {
            ne0: 16,
            block: 32,
            ..
        }
    ));

    let mut w = small();
    w.tensors[0].ty_id = 99;
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::UnsupportedTensorType { id: 99, .. }
    ));

    // Tensor and metadata counts far beyond the file size.
    let mut b = small().to_bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes(b).unwrap_err(),
        GgufError::CountTooLarge { .. }
    ));
    let mut b = small().to_bytes();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes(b).unwrap_err(),
        GgufError::CountTooLarge { .. }
    ));
    // An array claiming 2^60 elements.
    let mut w = GgufWriter::new();
    w.meta("arr", Value::Array(ValueType::U32, vec![Value::U32(1)]));
    let mut b = w.to_bytes();
    let at = b.windows(3).position(|x| x == b"arr").unwrap() + 3 + 4;
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes(b).unwrap_err(),
        GgufError::CountTooLarge { .. }
    ));
    // A string claiming 2^62 bytes.
    let mut w = GgufWriter::new();
    w.meta("s", Value::String("abc".into()));
    let mut b = w.to_bytes();
    let at = b.windows(1).rposition(|x| x == b"s").unwrap() + 1 + 4;
    b[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes(b).unwrap_err(),
        GgufError::Truncated { .. }
    ));
}

#[test]
fn bad_utf8_bad_types_and_duplicates_in_metadata_are_named() {
    let mut w = GgufWriter::new();
    w.meta("key\u{e9}", Value::U8(1));
    let mut b = w.to_bytes();
    let at = b.windows(2).position(|x| x == "\u{e9}".as_bytes()).unwrap();
    b[at] = 0xff;
    let e = GgufFile::from_bytes(b).unwrap_err();
    assert!(
        matches!(e, GgufError::BadUtf8 { ref what, .. } if what == "metadata key"),
        "{e}"
    );

    let mut w = GgufWriter::new();
    w.meta("k", Value::String("va\u{e9}".into()));
    let mut b = w.to_bytes();
    let at = b.windows(2).position(|x| x == "\u{e9}".as_bytes()).unwrap();
    b[at + 1] = b'x';
    let e = GgufFile::from_bytes(b).unwrap_err();
    assert!(
        matches!(e, GgufError::BadUtf8 { ref what, .. } if what.contains("'k'")),
        "{e}"
    );

    let mut w = GgufWriter::new();
    w.meta("k", Value::U8(1));
    let mut b = w.to_bytes();
    let at = 24 + 8 + 1;
    b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes(b).unwrap_err(),
        GgufError::UnknownValueType { id: 77, .. }
    ));

    let mut w = GgufWriter::new();
    w.meta("k", Value::Bool(true));
    let mut b = w.to_bytes();
    // header (24) + key length (8) + "k" + value type (4)
    b[24 + 8 + 1 + 4] = 2;
    assert!(matches!(
        GgufFile::from_bytes(b).unwrap_err(),
        GgufError::Metadata { .. }
    ));

    let mut w = small();
    w.meta("answer", Value::U32(1));
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::DuplicateKey(ref k) if k == "answer"
    ));
    let mut w = small();
    w.tensors[1].name = "a".into();
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::DuplicateTensor(ref k) if k == "a"
    ));

    let mut w = small();
    w.meta("general.alignment", Value::U32(48));
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::BadAlignment(48)
    ));

    // Arrays nested deeper than the limit.
    let mut v = Value::Array(ValueType::U8, vec![]);
    for _ in 0..5 {
        v = Value::Array(ValueType::Array, vec![v]);
    }
    let mut w = GgufWriter::new();
    w.meta("deep", v);
    assert!(matches!(
        GgufFile::from_bytes(w.to_bytes()).unwrap_err(),
        GgufError::TooDeep { .. }
    ));
}

#[test]
fn open_names_a_missing_file() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(
        matches!(e, GgufError::Io { ref path, .. } if path == "/nonexistent/model.gguf"),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/model.gguf"));
}
