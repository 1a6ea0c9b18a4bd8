// A kubelet API server for the interop tests: virtual-kubelet's node/api
// handlers (the ones real virtual kubelets serve) over mutual TLS, with a
// provider whose containers are real processes on this host. With
// --kubeconfig it also registers and heartbeats its Node and runs the pods the
// API binds to it, through virtual-kubelet's nodeutil/node controllers.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/sirupsen/logrus"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vklogrus "github.com/virtual-kubelet/virtual-kubelet/log/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	corev1listers "k8s.io/client-go/listers/core/v1"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// "namespace/pod/container [command args...]"
func parseDecl(line string) (declared, error) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return declared{}, fmt.Errorf("empty pod declaration")
	}
	parts := strings.Split(f[0], "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return declared{}, fmt.Errorf("pod declaration %q: want namespace/pod/container [command...]", line)
	}
	return declared{namespace: parts[0], pod: parts[1], container: parts[2], argv: f[1:]}, nil
}

func readDecls(path string) ([]declared, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []declared
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		d, err := parseDecl(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, d)
	}
	return out, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "__container" {
		containerMain(os.Args[2:])
		return
	}
	hostname, _ := os.Hostname()
	var (
		listen      = flag.String("listen", "127.0.0.1:10250", "address to serve the kubelet API on (TLS)")
		certFile    = flag.String("cert", "", "serving certificate (PEM)")
		keyFile     = flag.String("key", "", "serving key (PEM)")
		clientCA    = flag.String("client-ca", "", "CA (PEM) that must have signed every client certificate")
		nodeName    = flag.String("node-name", hostname, "node name")
		internalIP  = flag.String("internal-ip", "", "the Node's InternalIP and the pods' IP (default: the host of --listen)")
		podsFile    = flag.String("pods", "", "file of local pods: lines 'namespace/pod/container [command args...]'")
		kubeconfig  = flag.String("kubeconfig", "", "register the Node and run the pods bound to it through this API (else no API at all)")
		root        = flag.String("root", "", "directory for the containers' working directories and logs (default: a temporary one)")
		logMax      = flag.Int64("log-max-bytes", 8<<20, "bound of each container's log ring (two files)")
		forwardHost = flag.String("forward-host", "127.0.0.1", "host port-forward connects to")
		echoListen  = flag.String("echo-listen", "", "also serve a TCP echo server on this address")
		sinkListen  = flag.String("sink-listen", "", "also serve a TCP sink (answers '<bytes> <sha256>' at EOF) on this address")
		idle        = flag.Duration("stream-idle-timeout", 4*time.Hour, "exec/attach/port-forward idle timeout (the kubelet's default)")
		creation    = flag.Duration("stream-creation-timeout", 30*time.Second, "exec/attach/port-forward stream creation timeout")
		noHTTP2     = flag.Bool("disable-http2", false, "serve HTTP/1.1 only")
		verbose     = flag.Bool("v", false, "debug logging")
	)
	var podFlags multiFlag
	flag.Var(&podFlags, "pod", "a local pod container: 'namespace/pod/container [command args...]' (repeatable)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("kubelet[" + *nodeName + "] ")

	logger := logrus.New()
	if *verbose {
		logger.SetLevel(logrus.DebugLevel)
	}
	vklog.L = vklogrus.FromLogrus(logrus.NewEntry(logger))

	if *certFile == "" || *keyFile == "" || *clientCA == "" {
		log.Fatal("--cert, --key and --client-ca are required")
	}
	host, port, err := net.SplitHostPort(*listen)
	if err != nil {
		log.Fatalf("--listen: %v", err)
	}
	if *internalIP == "" {
		*internalIP = host
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			*internalIP = "127.0.0.1"
		}
	}
	if *root == "" {
		dir, err := os.MkdirTemp("", "vk-"+*nodeName+"-")
		if err != nil {
			log.Fatal(err)
		}
		*root = dir
	}
	if err := os.MkdirAll(*root, 0o755); err != nil {
		log.Fatal(err)
	}

	tlsConfig, err := serverTLS(*certFile, *keyFile, *clientCA, !*noHTTP2)
	if err != nil {
		log.Fatal(err)
	}

	var decls []declared
	if *podsFile != "" {
		if decls, err = readDecls(*podsFile); err != nil {
			log.Fatal(err)
		}
	}
	for _, s := range podFlags {
		d, err := parseDecl(s)
		if err != nil {
			log.Fatal(err)
		}
		decls = append(decls, d)
	}

	if *echoListen != "" {
		if err := serveEcho(*echoListen); err != nil {
			log.Fatal(err)
		}
	}
	if *sinkListen != "" {
		if err := serveSink(*sinkListen); err != nil {
			log.Fatal(err)
		}
	}

	prov := newProvider(*nodeName, *internalIP, *root, *logMax, *forwardHost)
	if err := prov.addDeclared(decls); err != nil {
		prov.stopAll()
		log.Fatal(err)
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	// Keep a recent CPU sample of everything, so that the first
	// stats/summary already has usageNanoCores.
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			_, _ = prov.GetStatsSummary(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()

	// Pods the API says this node runs (for GET /pods): from the informer
	// when there is an API, else the local ones.
	podsFromKubernetes := prov.GetPods
	var vkNode *nodeutil.Node
	if *kubeconfig != "" {
		kubeletPort, _ := strconv.Atoi(port)
		prov.apiMode = true
		vkNode, err = newNode(*kubeconfig, *nodeName, *internalIP, int32(kubeletPort), *listen, prov)
		if err != nil {
			prov.stopAll()
			log.Fatal(err)
		}
		lister := podLister
		podsFromKubernetes = func(context.Context) ([]*corev1.Pod, error) { return lister.List(labels.Everything()) }
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		fams, err := prov.GetMetricsResource(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", api.PrometheusTextFormatContentType)
		enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, f := range fams {
			_ = enc.Encode(f)
		}
	})
	podHandlerConfig := api.PodHandlerConfig{
		RunInContainer:        prov.RunInContainer,
		AttachToContainer:     prov.AttachToContainer,
		PortForward:           prov.PortForward,
		GetContainerLogs:      prov.GetContainerLogs,
		GetPods:               prov.GetPods,
		GetPodsFromKubernetes: func(ctx context.Context) ([]*corev1.Pod, error) { return podsFromKubernetes(ctx) },
		GetStatsSummary:       prov.GetStatsSummary,
		GetMetricsResource:    prov.GetMetricsResource,
		StreamIdleTimeout:     *idle,
		StreamCreationTimeout: *creation,
	}
	api.AttachPodRoutes(podHandlerConfig, mux, true)

	l, err := net.Listen("tcp", *listen)
	if err != nil {
		prov.stopAll()
		log.Fatal(err)
	}
	srv := &http.Server{Handler: logRequests(mux), TLSConfig: tlsConfig, ReadHeaderTimeout: 30 * time.Second}
	if *noHTTP2 {
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(lingeringListener{l}, "", "") }()
	log.Printf("serving the kubelet API on https://%s (node %s, InternalIP %s, root %s, %d local containers)",
		l.Addr(), *nodeName, *internalIP, *root, len(decls))

	nodeDone := make(chan error, 1)
	if vkNode != nil {
		go func() { nodeDone <- vkNode.Run(ctx) }()
		go func() {
			if err := vkNode.WaitReady(ctx, 0); err == nil {
				log.Printf("node %s registered and Ready", *nodeName)
			}
		}()
	}

	exit := 0
	select {
	case <-ctx.Done():
		log.Printf("stopping")
	case err := <-served:
		log.Printf("server: %v", err)
		exit = 1
	case err := <-nodeDone:
		log.Printf("node controller: %v", err)
		exit = 1
	}
	cancel()
	shut, done := context.WithTimeout(context.Background(), 3*time.Second)
	_ = srv.Shutdown(shut)
	done()
	srv.Close()
	prov.stopAll()
	os.Exit(exit)
}

func serverTLS(certFile, keyFile, caFile string, http2 bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("client CA %s: no certificate in it", caFile)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
	if http2 {
		cfg.NextProtos = []string{"h2", "http/1.1"}
	} else {
		cfg.NextProtos = []string{"http/1.1"}
	}
	return cfg, nil
}

func logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who := "?"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			who = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		start := time.Now()
		h.ServeHTTP(w, r)
		log.Printf("%s %s %s (%s, %s, %v)", r.RemoteAddr, r.Method, r.URL.RequestURI(), who, r.Proto, time.Since(start).Round(time.Millisecond))
	})
}

var podLister corev1listers.PodLister

// The Node object and the pod controller, through virtual-kubelet's nodeutil.
func newNode(kubeconfig, name, internalIP string, kubeletPort int32, listen string, prov *provider) (*nodeutil.Node, error) {
	client, err := nodeutil.ClientsetFromEnv(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	memTotal := int64(0)
	if mi, err := memInfo(); err == nil {
		memTotal = int64(mi["MemTotal"])
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(memTotal, resource.BinarySI),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	shape := func(cfg *nodeutil.NodeConfig) error {
		cfg.HTTPListenAddr = listen
		cfg.NumWorkers = 2
		n := &cfg.NodeSpec
		// NodeRestriction forbids a node to set kubernetes.io/role itself.
		delete(n.Labels, "kubernetes.io/role")
		n.Labels["kubernetes.io/os"] = "linux"
		n.Labels["kubernetes.io/arch"] = runtime.GOARCH
		n.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: internalIP},
			{Type: corev1.NodeHostName, Address: name},
		}
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = kubeletPort
		n.Status.Capacity = capacity
		n.Status.Allocatable = capacity
		n.Status.NodeInfo = corev1.NodeSystemInfo{
			KubeletVersion:          "v1.37.1-virtual-kubelet-v1.14.1",
			OperatingSystem:         "linux",
			Architecture:            runtime.GOARCH,
			ContainerRuntimeVersion: "process://",
			KernelVersion:           strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
			OSImage:                 osImage(),
			MachineID:               name,
			SystemUUID:              name,
			BootID:                  name,
		}
		for i := range n.Status.Conditions {
			c := &n.Status.Conditions[i]
			if c.Type != corev1.NodeReady {
				c.Status = corev1.ConditionFalse
				c.Reason = "KubeletHasNo" + string(c.Type)
			}
		}
		return nil
	}
	newProv := func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		podLister = pc.Pods
		return prov, nil, nil
	}
	return nodeutil.NewNode(name, newProv, nodeutil.WithClient(client), shape)
}

func readFile(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

func osImage() string {
	for _, line := range strings.Split(readFile("/etc/os-release"), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return "linux"
}

// lingerTimeout bounds how long a closed connection waits for the client's
// own close while it discards the client's last bytes.
const lingerTimeout = 2 * time.Second

// lingeringListener gives every connection a lingering close, as net/http
// does itself for the connections it closes (closeWriteAndWait) but not for
// hijacked ones (exec, attach, port-forward), which the handler closes.
// Closed with input unread (the client's close of stdin, arriving just
// after the command ended), a socket is reset: the kernel sends RST and
// drops the output still queued, and kubectl exec then exits 0 with no
// output and no exit code.  Through a tunnel the client's last frames
// arrive a little later than over one hop, and that race is lost more
// often (issue 14's notes); a real kubelet closes a hijacked connection
// the same way.  This one sends FIN after its output, discards what the
// client still sends, and closes once the client has closed or
// lingerTimeout has passed.
type lingeringListener struct{ net.Listener }

func (l lingeringListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		return &lingeringConn{TCPConn: tc}, nil
	}
	return c, nil
}

type lingeringConn struct {
	*net.TCPConn
	once sync.Once
}

func (c *lingeringConn) Close() error {
	err := error(nil)
	c.once.Do(func() {
		err = c.TCPConn.CloseWrite()
		c.TCPConn.SetReadDeadline(time.Now().Add(lingerTimeout))
		go func() {
			io.Copy(io.Discard, c.TCPConn)
			c.TCPConn.Close()
		}()
	})
	return err
}
