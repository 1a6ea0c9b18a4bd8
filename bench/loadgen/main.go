// Command loadgen is the benchmark's HTTP load generator for front doors that
// speak HTTP CONNECT (twisted-tunnel's CONNECT door, Konnectivity's
// http-connect frontend): it asks the proxy for a tunnel to the target with
// CONNECT, then sends HTTP/1.1 GETs through that tunnel, and reports
// requests per second, bytes per second, latency percentiles and errors as
// JSON.  wrk and hey, the benchmark's other load tools, cannot send requests
// through a CONNECT tunnel.
//
// Modes:
//
//	keepalive  each of -c workers opens one tunnel and sends GETs on it,
//	           one after another, until -d is over (a new tunnel only if
//	           the origin closes the connection, e.g. nginx after 1,000)
//	new        every request opens a new TCP connection (and TLS, and
//	           CONNECT) and closes it afterwards ("Connection: close")
//
// With -connect "" it sends the GETs straight to -addr (no CONNECT): the
// same tool against a plain port, to compare it with wrk.
//
// Every wait is bounded (-timeout per read or write), the run stops at -d
// (requests in flight then are finished and counted; the rate divides by the
// time until the last one ended) or after -n requests.  Standard library
// only: the benchmark builds it from this folder with bench/peers/build.py.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	addr        string
	connect     string
	host        string
	path        string
	mode        string
	workers     int
	duration    time.Duration
	maxRequests int64
	expectBytes int64
	timeout     time.Duration
	tls         *tls.Config
}

// stats is one worker's tally; the workers' are added up at the end.
type stats struct {
	responses int64 // complete responses, any status
	ok        int64 // status 200 with the expected body
	errors    int64 // failed requests: transport errors, bad answers, non-200
	bytes     int64 // body bytes of the ok responses
	connects  int64 // tunnels (or connections) opened
	statuses  map[int]int64
	latencies []time.Duration // of the ok responses
	samples   []string        // the first few errors, to say what went wrong
}

func (s *stats) fail(err error) {
	s.errors++
	if len(s.samples) < 3 {
		s.samples = append(s.samples, err.Error())
	}
}

// result is what the tool prints.
type result struct {
	Mode              string           `json:"mode"`
	Connections       int              `json:"connections"`
	Seconds           float64          `json:"seconds"`
	Responses         int64            `json:"responses"`
	OK                int64            `json:"ok"`
	Errors            int64            `json:"errors"`
	Statuses          map[string]int64 `json:"statuses"`
	Bytes             int64            `json:"bytes"`
	Connects          int64            `json:"connects"`
	RequestsPerSecond float64          `json:"requestsPerSecond"`
	BytesPerSecond    float64          `json:"bytesPerSecond"`
	LatencyP50Ms      float64          `json:"latencyP50Ms"`
	LatencyP99Ms      float64          `json:"latencyP99Ms"`
	ErrorSamples      []string         `json:"errorSamples"`
}

// conn is an open connection to the origin, through the tunnel if there is one.
type conn struct {
	raw    net.Conn
	reader *bufio.Reader
	renew  time.Time // when to move the deadline on
}

func (c *conn) close() { c.raw.Close() }

// dial opens a connection to -addr (TLS if asked) and, with -connect, asks
// for the tunnel and checks that the answer is a 200.
func dial(cfg *config) (*conn, error) {
	raw, err := net.DialTimeout("tcp", cfg.addr, cfg.timeout)
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(time.Now().Add(cfg.timeout))
	if cfg.tls != nil {
		secure := tls.Client(raw, cfg.tls)
		if err := secure.Handshake(); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		raw = secure
	}
	c := &conn{raw: raw, reader: bufio.NewReaderSize(raw, 64*1024)}
	if cfg.connect != "" {
		request := "CONNECT " + cfg.connect + " HTTP/1.1\r\nHost: " + cfg.connect + "\r\n\r\n"
		if _, err := io.WriteString(raw, request); err != nil {
			c.close()
			return nil, fmt.Errorf("CONNECT: %w", err)
		}
		status, _, err := readHead(c.reader)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("CONNECT: %w", err)
		}
		if status != 200 {
			c.close()
			return nil, fmt.Errorf("CONNECT %s: status %d", cfg.connect, status)
		}
	}
	return c, nil
}

// head is what the tool needs of a response's header fields.
type head struct {
	length  int64 // -1: not given
	chunked bool
	close   bool
}

// readHead reads a status line and header fields (at most 64 KiB of them).
// It works on the reader's own bytes, without copies: it runs once per request.
func readHead(r *bufio.Reader) (int, head, error) {
	h := head{length: -1}
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, h, fmt.Errorf("reading the status line: %w", err)
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, h, fmt.Errorf("not an HTTP/1.x status line: %q", line)
	}
	status := 0
	for _, digit := range line[9:12] {
		if digit < '0' || digit > '9' {
			return 0, h, fmt.Errorf("bad status in %q", line)
		}
		status = status*10 + int(digit-'0')
	}
	h.close = line[7] == '0'
	total := len(line)
	for {
		line, err = r.ReadSlice('\n')
		if err != nil {
			return 0, h, fmt.Errorf("reading header fields: %w", err)
		}
		total += len(line)
		if total > 64*1024 {
			return 0, h, errors.New("header fields longer than 64 KiB")
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			return status, h, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case bytes.EqualFold(name, []byte("content-length")):
			h.length, err = strconv.ParseInt(string(value), 10, 64)
			if err != nil || h.length < 0 {
				return 0, h, fmt.Errorf("bad Content-Length %q", value)
			}
		case bytes.EqualFold(name, []byte("transfer-encoding")):
			h.chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("connection")):
			if bytes.EqualFold(value, []byte("close")) {
				h.close = true
			} else if bytes.EqualFold(value, []byte("keep-alive")) {
				h.close = false
			}
		}
	}
}

// readBody reads and discards a body; returns its length.
// bodyBuffer is what large bodies are read into: bufio's Discard would read
// them 64 KiB at a time.
var bodyBuffers = sync.Pool{New: func() any { return make([]byte, 512*1024) }}

// discard reads and drops n bytes: what r holds, then straight from the
// connection below it in large reads.
func discard(r *bufio.Reader, n int64) (int64, error) {
	buffered := int64(r.Buffered())
	if n <= buffered || n < 256*1024 {
		got, err := r.Discard(int(n))
		return int64(got), err
	}
	got, _ := r.Discard(int(buffered))
	done := int64(got)
	buffer := bodyBuffers.Get().([]byte)
	defer bodyBuffers.Put(buffer)
	for done < n {
		want := min(int64(len(buffer)), n-done)
		read, err := r.Read(buffer[:want]) // bufio reads large requests directly
		done += int64(read)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func readBody(r *bufio.Reader, h head) (int64, error) {
	switch {
	case h.chunked:
		var total int64
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return total, fmt.Errorf("reading a chunk size: %w", err)
			}
			sizeText, _, _ := strings.Cut(strings.TrimSpace(string(line)), ";")
			size, err := strconv.ParseInt(sizeText, 16, 64)
			if err != nil || size < 0 {
				return total, fmt.Errorf("bad chunk size %q", line)
			}
			if size == 0 {
				for { // trailer fields, then the empty line
					line, err = r.ReadSlice('\n')
					if err != nil {
						return total, err
					}
					if strings.TrimSpace(string(line)) == "" {
						return total, nil
					}
				}
			}
			if _, err := r.Discard(int(size)); err != nil {
				return total, fmt.Errorf("reading a chunk: %w", err)
			}
			total += size
			if _, err := r.Discard(2); err != nil {
				return total, err
			}
		}
	case h.length >= 0:
		n, err := discard(r, h.length)
		if err != nil {
			return n, fmt.Errorf("body: %d of %d bytes: %w", n, h.length, err)
		}
		return n, nil
	default: // until the origin closes
		n, err := io.Copy(io.Discard, r)
		return n, err
	}
}

type run struct {
	cfg      *config
	request  []byte
	deadline time.Time
	tickets  atomic.Int64 // requests still allowed (with -n)
}

// take reports whether another request may start.
func (r *run) take() bool {
	if time.Now().After(r.deadline) {
		return false
	}
	if r.cfg.maxRequests > 0 {
		return r.tickets.Add(-1) >= 0
	}
	return true
}

// exchange sends one request on c and reads the answer; reports whether
// the connection may be used again.
func (r *run) exchange(c *conn, s *stats, started time.Time) (bool, error) {
	// Moving the deadline costs a timer update: do it when a quarter of it is gone.
	if started.After(c.renew) {
		c.raw.SetDeadline(started.Add(r.cfg.timeout))
		c.renew = started.Add(r.cfg.timeout / 4)
	}
	if _, err := c.raw.Write(r.request); err != nil {
		return false, fmt.Errorf("writing the request: %w", err)
	}
	status, h, err := readHead(c.reader)
	if err != nil {
		return false, err
	}
	// a large body may take longer than one timeout: give it one per MiB
	if h.length > 1<<20 {
		c.raw.SetDeadline(time.Now().Add(r.cfg.timeout * time.Duration(1+h.length>>20)))
		c.renew = time.Time{}
	}
	n, err := readBody(c.reader, h)
	if err != nil {
		return false, err
	}
	s.responses++
	s.statuses[status]++
	switch {
	case status != 200:
		s.fail(fmt.Errorf("status %d", status))
	case r.cfg.expectBytes >= 0 && n != r.cfg.expectBytes:
		s.fail(fmt.Errorf("a body of %d bytes, not %d", n, r.cfg.expectBytes))
	default:
		s.ok++
		s.bytes += n
		s.latencies = append(s.latencies, time.Since(started))
	}
	return !h.close && (h.length >= 0 || h.chunked), nil
}

func (r *run) keepAlive(s *stats) {
	var c *conn
	defer func() {
		if c != nil {
			c.close()
		}
	}()
	for r.take() {
		if c == nil {
			var err error
			if c, err = dial(r.cfg); err != nil {
				s.fail(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			s.connects++
		}
		again, err := r.exchange(c, s, time.Now())
		if err != nil {
			s.fail(err)
		}
		if err != nil || !again {
			c.close()
			c = nil
		}
	}
}

func (r *run) newEach(s *stats) {
	for r.take() {
		started := time.Now()
		c, err := dial(r.cfg)
		if err != nil {
			s.fail(err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.connects++
		if _, err := r.exchange(c, s, started); err != nil {
			s.fail(err)
		}
		c.close()
	}
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i]) / 1e6
}

func measure(cfg *config) result {
	connection := "keep-alive"
	if cfg.mode == "new" {
		connection = "close"
	}
	r := &run{
		cfg: cfg,
		request: []byte("GET " + cfg.path + " HTTP/1.1\r\nHost: " + cfg.host +
			"\r\nUser-Agent: twisted-tunnel-loadgen\r\nConnection: " + connection + "\r\n\r\n"),
	}
	r.tickets.Store(cfg.maxRequests)
	all := make([]*stats, cfg.workers)
	var wg sync.WaitGroup
	started := time.Now()
	r.deadline = started.Add(cfg.duration)
	for i := range all {
		s := &stats{statuses: map[int]int64{}, latencies: make([]time.Duration, 0, 4096)}
		all[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			if cfg.mode == "new" {
				r.newEach(s)
			} else {
				r.keepAlive(s)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(started).Seconds()
	out := result{Mode: cfg.mode, Connections: cfg.workers, Seconds: elapsed,
		Statuses: map[string]int64{}, ErrorSamples: []string{}}
	var latencies []time.Duration
	for _, s := range all {
		out.Responses += s.responses
		out.OK += s.ok
		out.Errors += s.errors
		out.Bytes += s.bytes
		out.Connects += s.connects
		for status, n := range s.statuses {
			out.Statuses[strconv.Itoa(status)] += n
		}
		latencies = append(latencies, s.latencies...)
		for _, sample := range s.samples {
			if len(out.ErrorSamples) < 5 {
				out.ErrorSamples = append(out.ErrorSamples, sample)
			}
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	out.RequestsPerSecond = float64(out.OK) / elapsed
	out.BytesPerSecond = float64(out.Bytes) / elapsed
	out.LatencyP50Ms = percentile(latencies, 0.5)
	out.LatencyP99Ms = percentile(latencies, 0.99)
	return out
}

func tlsConfig(ca, cert, key, name string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no certificate found", ca)
		}
		cfg.RootCAs = pool
	}
	if cert != "" || key != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func main() {
	cfg := &config{}
	var useTLS bool
	var ca, cert, key, serverName string
	flag.StringVar(&cfg.addr, "addr", "", "where to connect: the proxy (host:port)")
	flag.StringVar(&cfg.connect, "connect", "", `CONNECT target (host:port); "" sends the GETs to -addr`)
	flag.StringVar(&cfg.host, "host", "", "Host header of the GETs (default: -connect, else -addr)")
	flag.StringVar(&cfg.path, "path", "/", "path of the GETs")
	flag.StringVar(&cfg.mode, "mode", "keepalive", "keepalive or new (a new connection per request)")
	flag.IntVar(&cfg.workers, "c", 1, "concurrent connections")
	flag.DurationVar(&cfg.duration, "d", 5*time.Second, "how long to start requests")
	flag.Int64Var(&cfg.maxRequests, "n", 0, "at most this many requests (0: no limit)")
	flag.Int64Var(&cfg.expectBytes, "expect-bytes", -1, "a body of any other length is an error")
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "bound on each dial, read and write")
	flag.BoolVar(&useTLS, "tls", false, "TLS to -addr (verified against -ca)")
	flag.StringVar(&ca, "ca", "", "CA certificate (PEM) that signed the proxy's certificate")
	flag.StringVar(&cert, "cert", "", "client certificate (PEM), for mutual TLS")
	flag.StringVar(&key, "key", "", "the client certificate's key (PEM)")
	flag.StringVar(&serverName, "server-name", "", "name to verify the proxy's certificate for (default: -addr's host)")
	procs := flag.Int("procs", 1, "OS threads running Go code (GOMAXPROCS): 1, like wrk -t1")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	if cfg.addr == "" || cfg.workers < 1 || (cfg.mode != "keepalive" && cfg.mode != "new") {
		flag.Usage()
		os.Exit(2)
	}
	if cfg.host == "" {
		cfg.host = cfg.connect
		if cfg.host == "" {
			cfg.host = cfg.addr
		}
	}
	if useTLS {
		if serverName == "" {
			serverName, _, _ = net.SplitHostPort(cfg.addr)
		}
		var err error
		if cfg.tls, err = tlsConfig(ca, cert, key, serverName); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(2)
		}
	}
	out := measure(cfg)
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetIndent("", " ")
	encoder.Encode(out)
}
