package main

// The provider behind virtual-kubelet's node/api handlers (and, with
// --kubeconfig, its pod controller): pods whose containers are real processes.

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilexec "k8s.io/utils/exec"
)

type podEntry struct {
	pod        *corev1.Pod
	containers map[string]*container
	order      []string
	started    time.Time
	local      bool // declared with --pod/--pods, not from the API
}

type provider struct {
	nodeName    string
	internalIP  string
	root        string
	logMax      int64
	forwardHost string

	apiMode bool // pods come from the API too: GetPods then lists only those

	mu     sync.Mutex
	pods   map[string]*podEntry // "namespace/name"
	notify func(*corev1.Pod)

	stats *statsSampler
}

func newProvider(nodeName, internalIP, root string, logMax int64, forwardHost string) *provider {
	return &provider{
		nodeName: nodeName, internalIP: internalIP, root: root, logMax: logMax,
		forwardHost: forwardHost, pods: map[string]*podEntry{}, stats: newStatsSampler(),
	}
}

// One container declared on the command line or in --pods.
type declared struct {
	namespace, pod, container string
	argv                      []string
}

// Add the pods declared locally (not from the API).
func (p *provider) addDeclared(decls []declared) error {
	byPod := map[string]*corev1.Pod{}
	argv := map[string][]string{}
	var keys []string
	for _, d := range decls {
		k := d.namespace + "/" + d.pod
		pod, ok := byPod[k]
		if !ok {
			pod = &corev1.Pod{
				TypeMeta:   metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
				ObjectMeta: metav1.ObjectMeta{Namespace: d.namespace, Name: d.pod, UID: types.UID("local-" + d.namespace + "-" + d.pod), CreationTimestamp: metav1.Now()},
				Spec:       corev1.PodSpec{NodeName: p.nodeName, RestartPolicy: corev1.RestartPolicyAlways},
			}
			byPod[k] = pod
			keys = append(keys, k)
		}
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: d.container, Image: "process", Command: d.argv})
		argv[k+"/"+d.container] = d.argv
	}
	for _, k := range keys {
		if err := p.startPod(byPod[k], true, func(c corev1.Container) []string { return argv[k+"/"+c.Name] }); err != nil {
			return err
		}
	}
	return nil
}

// The process a container from the API runs: its command if this host has
// that program, else the default (ticker for "ticker", an idle echo otherwise).
func apiArgv(c corev1.Container) []string {
	cmd := append(append([]string{}, c.Command...), c.Args...)
	if len(c.Command) > 0 {
		if _, err := exec.LookPath(c.Command[0]); err == nil {
			return cmd
		}
	}
	return nil
}

func (p *provider) startPod(pod *corev1.Pod, local bool, argvOf func(corev1.Container) []string) error {
	key := pod.Namespace + "/" + pod.Name
	p.mu.Lock()
	if _, ok := p.pods[key]; ok {
		p.mu.Unlock()
		return nil
	}
	e := &podEntry{pod: pod.DeepCopy(), containers: map[string]*container{}, started: time.Now(), local: local}
	p.pods[key] = e
	p.mu.Unlock()
	for _, c := range pod.Spec.Containers {
		ct, err := newContainer(p.root, pod.Namespace, pod.Name, c.Name, argvOf(c), p.logMax)
		if err != nil {
			return err
		}
		if err := ct.start(); err != nil {
			return fmt.Errorf("starting %s/%s: %w", key, c.Name, err)
		}
		log.Printf("pod %s container %s: pid %d %v", key, c.Name, ct.pid(), ct.argv)
		p.mu.Lock()
		e.containers[c.Name] = ct
		e.order = append(e.order, c.Name)
		p.mu.Unlock()
	}
	return nil
}

func (p *provider) lookup(namespace, pod, name string) (*container, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[namespace+"/"+pod]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not known on node %s", namespace, pod, p.nodeName)
	}
	c, ok := e.containers[name]
	if !ok {
		return nil, errdefs.NotFoundf("container %s is not in pod %s/%s", name, namespace, pod)
	}
	return c, nil
}

func (p *provider) stopAll() {
	p.mu.Lock()
	var all []*container
	for _, e := range p.pods {
		for _, c := range e.containers {
			all = append(all, c)
		}
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop() }()
	}
	wg.Wait()
}

// ---- node.PodLifecycleHandler and node.PodNotifier ----------------------

func (p *provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	if err := p.startPod(pod, false, apiArgv); err != nil {
		return err
	}
	p.pushStatus(pod.Namespace, pod.Name)
	return nil
}

func (p *provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	if e, ok := p.pods[pod.Namespace+"/"+pod.Name]; ok {
		e.pod = pod.DeepCopy()
	}
	p.mu.Unlock()
	p.pushStatus(pod.Namespace, pod.Name)
	return nil
}

func (p *provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	key := pod.Namespace + "/" + pod.Name
	p.mu.Lock()
	e, ok := p.pods[key]
	delete(p.pods, key)
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFoundf("pod %s is not known", key)
	}
	for _, c := range e.containers {
		c.stop()
	}
	_ = os.RemoveAll(fmt.Sprintf("%s/%s/%s", p.root, pod.Namespace, pod.Name))
	if p.notify != nil {
		done := e.pod.DeepCopy()
		done.Status = *p.status(e)
		done.Status.Phase = corev1.PodSucceeded
		for i := range done.Status.ContainerStatuses {
			cs := &done.Status.ContainerStatuses[i]
			cs.Ready = false
			cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", FinishedAt: metav1.Now(),
				StartedAt: cs.State.Running.StartedAt,
			}}
		}
		p.notify(done)
	}
	return nil
}

func (p *provider) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	e, ok := p.pods[namespace+"/"+name]
	p.mu.Unlock()
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not known", namespace, name)
	}
	pod := e.pod.DeepCopy()
	pod.Status = *p.status(e)
	return pod, nil
}

func (p *provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	var keys []string
	for k, e := range p.pods {
		// The pod controller deletes any pod GetPods lists that the API does
		// not have: local pods stay out of its sight.
		if p.apiMode && e.local {
			continue
		}
		keys = append(keys, k)
	}
	p.mu.Unlock()
	sort.Strings(keys)
	var out []*corev1.Pod
	for _, k := range keys {
		var ns, name string
		for i := range k {
			if k[i] == '/' {
				ns, name = k[:i], k[i+1:]
				break
			}
		}
		if pod, err := p.GetPod(ctx, ns, name); err == nil {
			out = append(out, pod)
		}
	}
	return out, nil
}

func (p *provider) NotifyPods(ctx context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = f
	p.mu.Unlock()
}

func (p *provider) pushStatus(namespace, name string) {
	p.mu.Lock()
	f := p.notify
	p.mu.Unlock()
	if f == nil {
		return
	}
	if pod, err := p.GetPod(context.Background(), namespace, name); err == nil {
		f(pod)
	}
}

func (p *provider) status(e *podEntry) *corev1.PodStatus {
	start := metav1.NewTime(e.started)
	st := &corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    p.internalIP,
		HostIPs:   []corev1.HostIP{{IP: p.internalIP}},
		PodIP:     p.internalIP,
		PodIPs:    []corev1.PodIP{{IP: p.internalIP}},
		StartTime: &start,
	}
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: start})
	}
	p.mu.Lock()
	names := append([]string(nil), e.order...)
	p.mu.Unlock()
	for _, n := range names {
		c := e.containers[n]
		c.mu.Lock()
		started, restarts, pid := c.started, c.restarts, 0
		if c.cmd != nil && c.cmd.Process != nil {
			pid = c.cmd.Process.Pid
		}
		c.mu.Unlock()
		image := "process"
		for _, sc := range e.pod.Spec.Containers {
			if sc.Name == n && sc.Image != "" {
				image = sc.Image
			}
		}
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name:         n,
			Ready:        true,
			Started:      ptrBool(true),
			RestartCount: restarts,
			Image:        image,
			ImageID:      "process://" + image,
			ContainerID:  fmt.Sprintf("process://%d", pid),
			State:        corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(started)}},
		})
	}
	return st
}

func ptrBool(b bool) *bool { return &b }

// ---- logs ---------------------------------------------------------------

func (p *provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	c, err := p.lookup(namespace, podName, containerName)
	if err != nil {
		return nil, err
	}
	if opts.Previous {
		return nil, errdefs.InvalidInputf("previous terminated container %q in pod %q not found", containerName, podName)
	}
	// The handler's context ends when the client goes; follow ends with it.
	return c.logs.open(ctx, opts), nil
}

// ---- exec ---------------------------------------------------------------

func (p *provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	c, err := p.lookup(namespace, podName, containerName)
	if err != nil {
		return err
	}
	if len(cmd) == 0 {
		cmd = []string{"/bin/sh"}
	}
	path, err := exec.LookPath(cmd[0])
	if err != nil {
		// As a container runtime answers: the command cannot be run.
		if attach.Stderr() != nil {
			fmt.Fprintf(attach.Stderr(), "exec: %q: executable file not found in $PATH\n", cmd[0])
		} else if attach.Stdout() != nil {
			fmt.Fprintf(attach.Stdout(), "exec: %q: executable file not found in $PATH\n", cmd[0])
		}
		return utilexec.CodeExitError{Err: err, Code: 127}
	}
	ex := exec.CommandContext(ctx, path, cmd[1:]...)
	ex.Args[0] = cmd[0]
	ex.Dir = c.dir
	ex.Env = append(os.Environ(), "POD_NAMESPACE="+namespace, "POD_NAME="+podName, "CONTAINER_NAME="+containerName)
	ex.Cancel = func() error { return ex.Process.Signal(syscall.SIGKILL) }
	if attach.TTY() {
		return runTTY(ctx, ex, attach)
	}
	return runPipes(ex, attach)
}

func runPipes(ex *exec.Cmd, attach api.AttachIO) error {
	if attach.Stdout() != nil {
		ex.Stdout = attach.Stdout()
	}
	if attach.Stderr() != nil {
		ex.Stderr = attach.Stderr()
	}
	ex.WaitDelay = 2 * time.Second
	var stdin io.WriteCloser
	if attach.Stdin() != nil {
		var err error
		if stdin, err = ex.StdinPipe(); err != nil {
			return err
		}
	}
	if err := ex.Start(); err != nil {
		return err
	}
	if stdin != nil {
		// Not waited for: the client may keep its stdin open after the
		// process has ended.
		go func() {
			io.Copy(stdin, attach.Stdin())
			stdin.Close()
		}()
	}
	return exitError(ex.Wait())
}

func runTTY(ctx context.Context, ex *exec.Cmd, attach api.AttachIO) error {
	ex.Env = append(ex.Env, "TERM=xterm")
	ptmx, err := pty.Start(ex)
	if err != nil {
		return err
	}
	defer ptmx.Close()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s, ok := <-attach.Resize():
				if !ok {
					return
				}
				_ = pty.Setsize(ptmx, &pty.Winsize{Rows: s.Height, Cols: s.Width})
			}
		}
	}()
	if attach.Stdin() != nil {
		go io.Copy(ptmx, attach.Stdin())
	}
	out := make(chan struct{})
	go func() {
		defer close(out)
		if attach.Stdout() != nil {
			io.Copy(attach.Stdout(), ptmx) // ends with EIO once the process and its children are gone
		} else {
			io.Copy(io.Discard, ptmx)
		}
	}()
	err = ex.Wait()
	select {
	case <-out:
	case <-time.After(2 * time.Second):
	}
	return exitError(err)
}

func exitError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*exec.ExitError); ok {
		return utilexec.CodeExitError{Err: err, Code: exitCodeOf(err)}
	}
	return err
}

// ---- attach -------------------------------------------------------------

// Attach to the container's main process: what it writes from now on comes
// back (stderr on stderr unless TTY), stdin goes to its stdin. Ends when the
// client goes or the process exits (with its exit code).
func (p *provider) AttachToContainer(ctx context.Context, namespace, podName, containerName string, attach api.AttachIO) error {
	c, err := p.lookup(namespace, podName, containerName)
	if err != nil {
		return err
	}
	_, ch := c.logs.snapshot(true)
	defer c.logs.unsubscribe(ch)
	c.mu.Lock()
	stdin, exited := c.stdin, c.exited
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if attach.Stdin() != nil && stdin != nil {
		go func() {
			_, err := io.Copy(stdin, attach.Stdin())
			if err != nil { // the client's stream broke: the attach is over
				cancel()
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-exited:
			c.mu.Lock()
			code := c.exitCode
			c.mu.Unlock()
			if code != 0 {
				return utilexec.CodeExitError{Err: fmt.Errorf("container exited with %d", code), Code: code}
			}
			return nil
		case e, ok := <-ch:
			if !ok {
				return nil
			}
			w := attach.Stdout()
			if e.stream == "stderr" && !attach.TTY() {
				w = attach.Stderr()
			}
			if w == nil {
				continue
			}
			if _, err := w.Write(e.render(false)); err != nil {
				return nil
			}
		}
	}
}

// ---- port-forward -------------------------------------------------------

func (p *provider) PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	p.mu.Lock()
	_, ok := p.pods[namespace+"/"+pod]
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFoundf("pod %s/%s is not known", namespace, pod)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(p.forwardHost, fmt.Sprint(port)))
	if err != nil {
		return fmt.Errorf("port-forward to port %d of pod %s/%s: %w", port, namespace, pod, err)
	}
	defer conn.Close()
	go func() {
		if _, err := io.Copy(conn, stream); err != nil {
			conn.Close() // the client's stream broke: end both ways
			return
		}
		// The client has sent all it will: pass the half-close on.
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(stream, conn)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
}
