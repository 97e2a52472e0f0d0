//! Encode/decode throughput of the native protocol codec.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spock_benches::pgbench_like_transaction;
use spock_core::proto::{self, ProtoVersion};

fn codec(c: &mut Criterion) {
    for version in [ProtoVersion::V4, ProtoVersion::V5] {
        let frames = pgbench_like_transaction(version, 1);
        let messages: Vec<_> = frames.iter().map(|f| proto::decode(f, version).unwrap().message).collect();
        let mut group = c.benchmark_group(format!("codec_v{}", version.as_u32()));
        group.throughput(Throughput::Elements(frames.len() as u64));
        group.bench_function("decode_pgbench_txn", |b| {
            b.iter(|| {
                for f in &frames {
                    std::hint::black_box(proto::decode(f, version).unwrap());
                }
            })
        });
        group.bench_function("encode_pgbench_txn", |b| {
            b.iter_batched_ref(
                || BytesMut::with_capacity(4096),
                |out| {
                    for m in &messages {
                        proto::encode(m, version, 1, out).unwrap();
                    }
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
