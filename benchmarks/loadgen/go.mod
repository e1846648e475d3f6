module github.com/streamgate/streamgate/benchmarks/loadgen

go 1.22
