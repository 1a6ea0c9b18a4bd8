package main

// A "container" is a real process on this host (in whatever network
// namespace the program runs in): by default this program itself, started
// again in a container mode; its stdout and stderr go to the container's log
// store, its stdin is kept open for attach.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

type container struct {
	namespace, pod, name string
	argv                 []string
	dir                  string // working directory of the process and of exec
	logs                 *logStore

	mu       sync.Mutex
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	started  time.Time
	restarts int32
	exited   chan struct{} // closed when the current process exits
	exitCode int
	stopped  bool
}

// The process a container runs when nothing else is asked: ticker for a
// container named "ticker", an idle echo for any other.
func defaultArgv(name string) []string {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	if name == "ticker" {
		return []string{self, "__container", "--tick=100ms"}
	}
	return []string{self, "__container"}
}

func newContainer(root, namespace, pod, name string, argv []string, logMax int64) (*container, error) {
	dir := filepath.Join(root, namespace, pod, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	store, err := newLogStore(filepath.Join(root, namespace, pod, name+".log"), logMax)
	if err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		argv = defaultArgv(name)
	}
	return &container{namespace: namespace, pod: pod, name: name, argv: argv, dir: dir, logs: store}, nil
}

func (c *container) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return fmt.Errorf("container %s/%s/%s is stopped", c.namespace, c.pod, c.name)
	}
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(),
		"POD_NAMESPACE="+c.namespace, "POD_NAME="+c.pod, "CONTAINER_NAME="+c.name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	c.cmd, c.stdin, c.started = cmd, stdin, time.Now()
	exited := make(chan struct{})
	c.exited = exited
	var pumps sync.WaitGroup
	pumps.Add(2)
	go func() { defer pumps.Done(); c.logs.pump(stdout, "stdout") }()
	go func() { defer pumps.Done(); c.logs.pump(stderr, "stderr") }()
	go func() {
		pumps.Wait()
		err := cmd.Wait()
		c.mu.Lock()
		c.exitCode = exitCodeOf(err)
		stopped := c.stopped
		c.mu.Unlock()
		close(exited)
		if !stopped { // restartPolicy: Always
			log.Printf("container %s/%s/%s exited (%v); restarting", c.namespace, c.pod, c.name, err)
			time.Sleep(time.Second)
			c.mu.Lock()
			c.restarts++
			c.mu.Unlock()
			if err := c.start(); err != nil {
				log.Printf("container %s/%s/%s: restart failed: %v", c.namespace, c.pod, c.name, err)
			}
		}
	}()
	return nil
}

func (c *container) stop() {
	c.mu.Lock()
	c.stopped = true
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(2 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	c.logs.close()
}

func (c *container) pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}

// ---- the container modes of this program --------------------------------

// __container [--tick=D]: with --tick, write "<RFC3339Nano UTC> tick <n>" every
// D; always echo each stdin line back as "stdin: <line>" (so attach can be
// seen to reach the process). Runs until killed.
func containerMain(args []string) {
	var tick time.Duration
	for _, a := range args {
		if strings.HasPrefix(a, "--tick=") {
			d, err := time.ParseDuration(strings.TrimPrefix(a, "--tick="))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			tick = d
		}
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	emit := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		out.WriteString(s)
		out.Flush()
	}
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			emit("stdin: " + sc.Text() + "\n")
		}
	}()
	if tick <= 0 {
		select {}
	}
	t := time.NewTicker(tick)
	n := 0
	for now := range t.C {
		n++
		emit(fmt.Sprintf("%s tick %d\n", now.UTC().Format(time.RFC3339Nano), n))
	}
}

// A TCP echo server (every byte back) on addr.
func serveEcho(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Printf("echo server on %s", l.Addr())
	go acceptLoop(l, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	return nil
}

// A TCP sink on addr: reads to EOF, then answers "<bytes> <sha256 hex>\n".
func serveSink(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Printf("sink server on %s", l.Addr())
	go acceptLoop(l, func(c net.Conn) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		fmt.Fprintf(c, "%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	})
	return nil
}

func acceptLoop(l net.Listener, serve func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			serve(c)
		}()
	}
}
