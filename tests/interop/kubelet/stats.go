package main

// stats/summary and metrics/resource from /proc: the node from /proc/stat,
// /proc/meminfo, /proc/net/dev; each container from its process's
// /proc/<pid>/stat and statm.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

const clkTck = 100 // USER_HZ on Linux

var pageSize = uint64(os.Getpagesize())

type cpuSample struct {
	at    time.Time
	nanos uint64 // cumulative CPU time
}

// Remembers the last cumulative CPU reading of each thing, to give a rate.
type statsSampler struct {
	mu   sync.Mutex
	last map[string]cpuSample
}

func newStatsSampler() *statsSampler { return &statsSampler{last: map[string]cpuSample{}} }

func (s *statsSampler) rate(key string, now time.Time, nanos uint64) *uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, ok := s.last[key]
	s.last[key] = cpuSample{at: now, nanos: nanos}
	if !ok || !now.After(prev.at) || nanos < prev.nanos {
		return nil
	}
	r := uint64(float64(nanos-prev.nanos) / now.Sub(prev.at).Seconds())
	return &r
}

func u64(v uint64) *uint64 { return &v }

// Cumulative busy CPU time of the machine, in ns.
func nodeCPUNanos() (uint64, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[0] == "cpu" {
			var busy uint64
			for i, v := range fields[1:] {
				n, _ := strconv.ParseUint(v, 10, 64)
				if i == 3 || i == 4 { // idle, iowait
					continue
				}
				if i >= 8 { // guest, guest_nice are already in user
					break
				}
				busy += n
			}
			return busy * (1e9 / clkTck), nil
		}
	}
	return 0, fmt.Errorf("/proc/stat: no cpu line")
}

func memInfo() (map[string]uint64, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			n, _ := strconv.ParseUint(f[1], 10, 64)
			out[strings.TrimSuffix(f[0], ":")] = n * 1024
		}
	}
	return out, nil
}

func bootTime() time.Time {
	data, err := os.ReadFile("/proc/stat")
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "btime ") {
				n, _ := strconv.ParseInt(strings.TrimSpace(line[6:]), 10, 64)
				return time.Unix(n, 0)
			}
		}
	}
	return time.Now()
}

// CPU time (ns) and resident bytes of a process.
func procUsage(pid int) (cpuNanos, rss uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the ")" that ends the command name: state is field 3.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	statm, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return 0, 0, err
	}
	sf := strings.Fields(string(statm))
	if len(sf) > 1 {
		pages, _ := strconv.ParseUint(sf[1], 10, 64)
		rss = pages * pageSize
	}
	return (utime + stime) * (1e9 / clkTck), rss, nil
}

func netStats(now metav1.Time) *statsv1alpha1.NetworkStats {
	data, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		return nil
	}
	ns := &statsv1alpha1.NetworkStats{Time: now}
	for _, line := range strings.Split(string(data), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		name = strings.TrimSpace(name)
		f := strings.Fields(rest)
		if len(f) < 16 || name == "lo" {
			continue
		}
		p := func(i int) *uint64 { n, _ := strconv.ParseUint(f[i], 10, 64); return &n }
		ns.Interfaces = append(ns.Interfaces, statsv1alpha1.InterfaceStats{
			Name: name, RxBytes: p(0), RxErrors: p(2), TxBytes: p(8), TxErrors: p(10),
		})
	}
	if len(ns.Interfaces) > 0 {
		ns.InterfaceStats = ns.Interfaces[0]
	}
	return ns
}

type containerSample struct {
	namespace, pod, uid, name string
	start                     time.Time
	cpuNanos, rss             uint64
	ok                        bool
}

func (p *provider) sampleContainers() []containerSample {
	p.mu.Lock()
	type ref struct {
		e *podEntry
		c *container
	}
	var refs []ref
	for _, e := range p.pods {
		for _, n := range e.order {
			refs = append(refs, ref{e, e.containers[n]})
		}
	}
	p.mu.Unlock()
	var out []containerSample
	for _, r := range refs {
		r.c.mu.Lock()
		start := r.c.started
		pid := 0
		if r.c.cmd != nil && r.c.cmd.Process != nil {
			pid = r.c.cmd.Process.Pid
		}
		r.c.mu.Unlock()
		s := containerSample{namespace: r.c.namespace, pod: r.c.pod, uid: string(r.e.pod.UID), name: r.c.name, start: start}
		if pid > 0 {
			if cpu, rss, err := procUsage(pid); err == nil {
				s.cpuNanos, s.rss, s.ok = cpu, rss, true
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.namespace+"/"+a.pod+"/"+a.name < b.namespace+"/"+b.pod+"/"+b.name
	})
	return out
}

// nodeUsage reads the node's CPU time and /proc/meminfo, which both the
// summary and the resource metrics report.
func nodeUsage() (cpu uint64, mi map[string]uint64, err error) {
	if cpu, err = nodeCPUNanos(); err != nil {
		return 0, nil, err
	}
	mi, err = memInfo()
	return cpu, mi, err
}

func (p *provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	at := time.Now()
	now := metav1.NewTime(at)
	cpu, mi, err := nodeUsage()
	if err != nil {
		return nil, err
	}
	total, avail, free := mi["MemTotal"], mi["MemAvailable"], mi["MemFree"]
	sum := &statsv1alpha1.Summary{
		Node: statsv1alpha1.NodeStats{
			NodeName:  p.nodeName,
			StartTime: metav1.NewTime(bootTime()),
			CPU:       &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: u64(cpu), UsageNanoCores: p.stats.rate("node", at, cpu)},
			Memory: &statsv1alpha1.MemoryStats{Time: now, AvailableBytes: u64(avail),
				UsageBytes: u64(total - free), WorkingSetBytes: u64(total - avail)},
			Network: netStats(now),
		},
	}
	pods := map[string]*statsv1alpha1.PodStats{}
	var order []string
	for _, s := range p.sampleContainers() {
		key := s.namespace + "/" + s.pod
		ps, ok := pods[key]
		if !ok {
			ps = &statsv1alpha1.PodStats{
				PodRef:    statsv1alpha1.PodReference{Namespace: s.namespace, Name: s.pod, UID: s.uid},
				StartTime: metav1.NewTime(s.start),
				CPU:       &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: u64(0), UsageNanoCores: u64(0)},
				Memory:    &statsv1alpha1.MemoryStats{Time: now, UsageBytes: u64(0), WorkingSetBytes: u64(0), RSSBytes: u64(0)},
			}
			pods[key] = ps
			order = append(order, key)
		}
		if !s.ok {
			continue
		}
		rate := p.stats.rate("c:"+key+"/"+s.name, at, s.cpuNanos)
		cs := statsv1alpha1.ContainerStats{
			Name:      s.name,
			StartTime: metav1.NewTime(s.start),
			CPU:       &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: u64(s.cpuNanos), UsageNanoCores: rate},
			Memory:    &statsv1alpha1.MemoryStats{Time: now, UsageBytes: u64(s.rss), WorkingSetBytes: u64(s.rss), RSSBytes: u64(s.rss)},
		}
		ps.Containers = append(ps.Containers, cs)
		*ps.CPU.UsageCoreNanoSeconds += s.cpuNanos
		if rate != nil {
			*ps.CPU.UsageNanoCores += *rate
		}
		*ps.Memory.UsageBytes += s.rss
		*ps.Memory.WorkingSetBytes += s.rss
		*ps.Memory.RSSBytes += s.rss
	}
	for _, k := range order {
		sum.Pods = append(sum.Pods, *pods[k])
	}
	return sum, nil
}

// The families the kubelet serves at /metrics/resource (what metrics-server reads).
func (p *provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	at := time.Now()
	ts := at.UnixMilli()
	cpu, mi, err := nodeUsage()
	if err != nil {
		return nil, err
	}
	counter, gauge := dto.MetricType_COUNTER, dto.MetricType_GAUGE
	family := func(name, help string, t dto.MetricType) *dto.MetricFamily {
		return &dto.MetricFamily{Name: &name, Help: &help, Type: &t}
	}
	label := func(kv ...string) []*dto.LabelPair {
		var out []*dto.LabelPair
		for i := 0; i+1 < len(kv); i += 2 {
			k, v := kv[i], kv[i+1]
			out = append(out, &dto.LabelPair{Name: &k, Value: &v})
		}
		return out
	}
	c := func(v float64, l []*dto.LabelPair) *dto.Metric {
		return &dto.Metric{Label: l, Counter: &dto.Counter{Value: &v}, TimestampMs: &ts}
	}
	g := func(v float64, l []*dto.LabelPair) *dto.Metric {
		return &dto.Metric{Label: l, Gauge: &dto.Gauge{Value: &v}, TimestampMs: &ts}
	}

	nodeCPU := family("node_cpu_usage_seconds_total", "Cumulative cpu time consumed by the node in core-seconds", counter)
	nodeCPU.Metric = []*dto.Metric{c(float64(cpu)/1e9, nil)}
	nodeMem := family("node_memory_working_set_bytes", "Current working set of the node in bytes", gauge)
	nodeMem.Metric = []*dto.Metric{g(float64(mi["MemTotal"]-mi["MemAvailable"]), nil)}

	ctrCPU := family("container_cpu_usage_seconds_total", "Cumulative cpu time consumed by the container in core-seconds", counter)
	ctrMem := family("container_memory_working_set_bytes", "Current working set of the container in bytes", gauge)
	ctrStart := family("container_start_time_seconds", "Start time of the container since unix epoch in seconds", gauge)
	podCPU := family("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod in core-seconds", counter)
	podMem := family("pod_memory_working_set_bytes", "Current working set of the pod in bytes", gauge)

	type agg struct{ cpu, mem float64 }
	pods := map[[2]string]*agg{}
	var order [][2]string
	for _, s := range p.sampleContainers() {
		if !s.ok {
			continue
		}
		l := label("container", s.name, "namespace", s.namespace, "pod", s.pod)
		ctrCPU.Metric = append(ctrCPU.Metric, c(float64(s.cpuNanos)/1e9, l))
		ctrMem.Metric = append(ctrMem.Metric, g(float64(s.rss), l))
		startVal := float64(s.start.UnixNano()) / 1e9
		ctrStart.Metric = append(ctrStart.Metric, &dto.Metric{Label: l, Gauge: &dto.Gauge{Value: &startVal}})
		k := [2]string{s.namespace, s.pod}
		if pods[k] == nil {
			pods[k] = &agg{}
			order = append(order, k)
		}
		pods[k].cpu += float64(s.cpuNanos) / 1e9
		pods[k].mem += float64(s.rss)
	}
	for _, k := range order {
		l := label("namespace", k[0], "pod", k[1])
		podCPU.Metric = append(podCPU.Metric, c(pods[k].cpu, l))
		podMem.Metric = append(podMem.Metric, g(pods[k].mem, l))
	}
	scrapeErr := family("scrape_error", "1 if there was an error while getting container metrics, 0 otherwise", gauge)
	zero := float64(0)
	scrapeErr.Metric = []*dto.Metric{{Gauge: &dto.Gauge{Value: &zero}}}

	out := []*dto.MetricFamily{ctrCPU, ctrMem, ctrStart, nodeCPU, nodeMem, podCPU, podMem, scrapeErr}
	var nonEmpty []*dto.MetricFamily
	for _, f := range out {
		if len(f.Metric) > 0 {
			nonEmpty = append(nonEmpty, f)
		}
	}
	return nonEmpty, nil
}
