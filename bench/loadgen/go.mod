module twisted-tunnel.bench/loadgen

go 1.26.8
