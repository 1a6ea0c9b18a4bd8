package main

// A container's log: every line its process writes, kept in a bounded ring
// of two files in the CRI log format the kubelet reads
// ("<RFC3339Nano> <stream> <F|P> <text>"), and pushed live to followers.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
)

type logEntry struct {
	ts      time.Time
	stream  string // "stdout" or "stderr"
	partial bool
	text    []byte // without the newline
}

func (e logEntry) encode() []byte {
	tag := "F"
	if e.partial {
		tag = "P"
	}
	return []byte(fmt.Sprintf("%s %s %s %s\n", e.ts.UTC().Format(time.RFC3339Nano), e.stream, tag, e.text))
}

func parseEntry(line []byte) (logEntry, bool) {
	parts := bytes.SplitN(bytes.TrimSuffix(line, []byte("\n")), []byte(" "), 4)
	if len(parts) < 3 {
		return logEntry{}, false
	}
	ts, err := time.Parse(time.RFC3339Nano, string(parts[0]))
	if err != nil {
		return logEntry{}, false
	}
	e := logEntry{ts: ts, stream: string(parts[1]), partial: string(parts[2]) == "P"}
	if len(parts) == 4 {
		e.text = parts[3]
	}
	return e, true
}

// What a reader of the log sees of one entry.
func (e logEntry) render(timestamps bool) []byte {
	var b bytes.Buffer
	if timestamps {
		b.WriteString(e.ts.UTC().Format(time.RFC3339Nano))
		b.WriteByte(' ')
	}
	b.Write(e.text)
	if !e.partial {
		b.WriteByte('\n')
	}
	return b.Bytes()
}

type logStore struct {
	mu       sync.Mutex
	path     string // current file; path+".1" is the previous one
	maxBytes int64  // both files together
	file     *os.File
	size     int64
	subs     map[chan logEntry]struct{}
}

func newLogStore(path string, maxBytes int64) (*logStore, error) {
	_ = os.Remove(path + ".1")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return &logStore{path: path, maxBytes: maxBytes, file: f, subs: map[chan logEntry]struct{}{}}, nil
}

func (s *logStore) append(e logEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.file == nil {
		return
	}
	line := e.encode()
	if s.size+int64(len(line)) > s.maxBytes/2 && s.size > 0 {
		s.file.Close()
		_ = os.Rename(s.path, s.path+".1")
		f, err := os.OpenFile(s.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			s.file = nil
			return
		}
		s.file, s.size = f, 0
	}
	n, _ := s.file.Write(line)
	s.size += int64(n)
	for ch := range s.subs {
		select {
		case ch <- e:
		default: // a follower too slow for the ring: cut it off, as the kubelet would
			delete(s.subs, ch)
			close(ch)
		}
	}
}

// Pump one stream of a process into the store, line by line.
func (s *logStore) pump(r io.Reader, stream string) {
	br := bufio.NewReaderSize(r, 16*1024)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			full := line[len(line)-1] == '\n'
			text := append([]byte(nil), bytes.TrimSuffix(line, []byte("\n"))...)
			s.append(logEntry{ts: time.Now(), stream: stream, partial: !full, text: text})
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// The stored entries, oldest first, and (if subscribe) a channel of every
// entry appended after them.
func (s *logStore) snapshot(subscribe bool) ([]logEntry, chan logEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var entries []logEntry
	for _, p := range []string{s.path + ".1", s.path} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range bytes.SplitAfter(data, []byte("\n")) {
			if e, ok := parseEntry(line); ok {
				entries = append(entries, e)
			}
		}
	}
	var ch chan logEntry
	if subscribe {
		ch = make(chan logEntry, 4096)
		s.subs[ch] = struct{}{}
	}
	return entries, ch
}

func (s *logStore) unsubscribe(ch chan logEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.subs[ch]; ok {
		delete(s.subs, ch)
		close(ch)
	}
}

func (s *logStore) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
	for ch := range s.subs {
		close(ch)
	}
	s.subs = map[chan logEntry]struct{}{}
}

// A reader with the kubelet's log options: tailLines, sinceSeconds/sinceTime,
// timestamps, limitBytes, follow.
func (s *logStore) open(ctx context.Context, opts api.ContainerLogOpts) io.ReadCloser {
	entries, ch := s.snapshot(opts.Follow)
	var since time.Time
	if opts.SinceSeconds > 0 {
		since = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	} else if !opts.SinceTime.IsZero() {
		since = opts.SinceTime
	}
	keep := entries[:0]
	for _, e := range entries {
		if since.IsZero() || !e.ts.Before(since) {
			keep = append(keep, e)
		}
	}
	entries = keep
	// ContainerLogOpts cannot tell "tailLines=0" from "not given": 0 means all.
	if opts.Tail > 0 {
		entries = tailLines(entries, opts.Tail)
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		if ch != nil {
			defer s.unsubscribe(ch)
		}
		left := opts.LimitBytes
		write := func(e logEntry) bool {
			b := e.render(opts.Timestamps)
			if opts.LimitBytes > 0 {
				if left <= 0 {
					return false
				}
				if len(b) > left {
					b = b[:left]
				}
				left -= len(b)
			}
			_, err := pw.Write(b)
			return err == nil && (opts.LimitBytes == 0 || left > 0)
		}
		for _, e := range entries {
			if !write(e) {
				pw.Close()
				return
			}
		}
		if ch == nil {
			pw.Close()
			return
		}
		for {
			select {
			case <-ctx.Done():
				pw.CloseWithError(ctx.Err())
				return
			case e, ok := <-ch:
				if !ok {
					pw.Close()
					return
				}
				if !write(e) {
					pw.Close()
					return
				}
			}
		}
	}()
	return &cancelReader{PipeReader: pr, cancel: cancel}
}

func tailLines(entries []logEntry, n int) []logEntry {
	// Count whole lines from the end (a partial entry belongs to the line after it).
	count := 0
	for i := len(entries) - 1; i >= 0; i-- {
		if !entries[i].partial {
			count++
			if count > n {
				return entries[i+1:]
			}
		}
	}
	return entries
}

type cancelReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r *cancelReader) Close() error {
	r.cancel()
	return r.PipeReader.Close()
}
