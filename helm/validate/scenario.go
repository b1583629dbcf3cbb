package main

// `validate run`: the rendered chart, run as local processes of the real
// binaries. Proves that every flag and variable the chart passes is
// accepted, that the pods the chart describes form a cluster whose probes
// pass, that the client Service and API keys are coherent (a publish
// through the Service succeeds), and, with -scale-up/-scale-down, that the
// rendered membership Jobs grow and shrink the Raft voters.

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

type harness struct {
	bin     string
	timeout time.Duration
	world   *World
	sup     *Supervisor
	ifaces  map[string]*Interface
	sts     *appsv1.StatefulSet
	nodes   []*LocalPod
	procs   map[string]*Proc
	key     string // an API key the nodes accept
	tlsCA   string // the cluster CA, when gRPC runs over TLS
	service string // local address of the client gRPC Service
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	bin := fs.String("bin", "target/debug", "directory with herald-node, herald-edge and herald")
	namespace := fs.String("namespace", "herald", "namespace the chart was rendered for (helm template --namespace)")
	domain := fs.String("cluster-domain", "cluster.local", "clusterDomain the chart was rendered with")
	scaleUp := fs.String("scale-up", "", "a render of the same release with more node replicas")
	scaleDown := fs.String("scale-down", "", "a render back to fewer replicas (node.membership.previousReplicas set)")
	edges := fs.Int("edges", 1, "edge processes to start when the render has edges")
	timeout := fs.Duration("timeout", 90*time.Second, "bound of each wait")
	keep := fs.Bool("keep", false, "keep the temporary directory (logs, data)")
	workdir := fs.String("workdir", "", "where to create the temporary directory (default: the system's)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("give exactly one rendered manifest")
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		return err
	}
	objects, errs := LoadManifests([]string{fs.Arg(0)})
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	dir, err := os.MkdirTemp(*workdir, "herald-chart-run-")
	if err != nil {
		return err
	}
	world, err := NewWorld(objects, *namespace, *domain, dir)
	if err != nil {
		return err
	}
	if err := world.IssueCerts(abs, 16); err != nil {
		return err
	}
	h := &harness{bin: abs, timeout: *timeout, world: world, sup: NewSupervisor(dir), ifaces: map[string]*Interface{}, procs: map[string]*Proc{}}
	err = h.run(objects, *edges, *scaleUp, *scaleDown)
	h.sup.StopAll()
	if err != nil {
		fmt.Fprintf(os.Stderr, "logs and data kept in %s\n", dir)
		return err
	}
	if !*keep {
		os.RemoveAll(dir)
	}
	return nil
}

func (h *harness) say(format string, args ...any) {
	fmt.Printf("  "+format+"\n", args...)
}

func (h *harness) iface(binary string) (*Interface, error) {
	if i, ok := h.ifaces[binary]; ok {
		return i, nil
	}
	path := filepath.Join(h.bin, binary)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s: %w (build the workspace first)", path, err)
	}
	i, err := ReadInterface(path)
	if err != nil {
		return nil, err
	}
	h.ifaces[binary] = i
	return i, nil
}

// checkInterfaces compares every Herald container's flags and variables
// with what its binary lists in --help.
func (h *harness) checkInterfaces(objects []Object) error {
	var bad []string
	checked := 0
	for _, o := range objects {
		t, ok := podSpec(o)
		if !ok {
			continue
		}
		for _, c := range append(append([]corev1.Container{}, t.Spec.InitContainers...), t.Spec.Containers...) {
			if len(c.Command) != 1 {
				bad = append(bad, fmt.Sprintf("%s %s container %s: command must be exactly the binary", o.Kind, o.Name, c.Name))
				continue
			}
			iface, err := h.iface(c.Command[0])
			if err != nil {
				return err
			}
			prefix := fmt.Sprintf("%s %s container %s: ", o.Kind, o.Name, c.Name)
			// `herald` takes a subcommand and positional arguments: only
			// its variables are checked here; its command lines are run
			// against the cluster below.
			if c.Command[0] != "herald" {
				for _, b := range iface.CheckArgs(c.Args) {
					bad = append(bad, prefix+b)
				}
			}
			for _, b := range iface.CheckEnv(c) {
				bad = append(bad, prefix+b)
			}
			checked++
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "\n"))
	}
	h.say("flags and environment of %d containers accepted by the binaries' --help", checked)
	return nil
}

// find returns the first workload of type T whose main container runs
// command, and its name.
func find[T any](objects []Object, command string) (*T, string) {
	for _, o := range objects {
		v, ok := o.Value.(*T)
		if !ok {
			continue
		}
		t, _ := podSpec(o)
		if t != nil && len(t.Spec.Containers) > 0 && len(t.Spec.Containers[0].Command) > 0 && t.Spec.Containers[0].Command[0] == command {
			return v, o.Name
		}
	}
	return nil, ""
}

func (h *harness) run(objects []Object, edgeCount int, scaleUp, scaleDown string) error {
	if err := h.checkInterfaces(objects); err != nil {
		return err
	}
	sts, _ := find[appsv1.StatefulSet](objects, "herald-node")
	if sts == nil {
		return errors.New("no StatefulSet running herald-node")
	}
	h.sts = sts
	nodes, err := h.world.StatefulPods(sts, nil)
	if err != nil {
		return err
	}
	h.nodes = nodes
	edge, edgeName := find[appsv1.Deployment](objects, "herald-edge")
	var edges []*LocalPod
	if edge != nil {
		if edges, err = h.world.DeploymentPods(edge, edgeCount); err != nil {
			return err
		}
	}
	owners := map[string][]*LocalPod{sts.Name: nodes}
	if edge != nil {
		owners[edgeName] = edges
	}
	h.world.MapServices(owners)
	for _, p := range nodes {
		if err := h.start(p); err != nil {
			return err
		}
	}
	if err := h.waitProbes(nodes); err != nil {
		return err
	}
	h.say("%d node(s) of StatefulSet %s passed their startup, readiness and liveness probes", len(nodes), sts.Name)
	if err := h.findServiceAndKey(objects); err != nil {
		return err
	}
	if err := h.publish("through the client Service"); err != nil {
		return err
	}
	for _, p := range edges {
		if err := h.start(p); err != nil {
			return err
		}
	}
	if len(edges) > 0 {
		if err := h.waitProbes(edges); err != nil {
			return err
		}
		h.say("%d edge(s) of Deployment %s passed their probes (linked to the nodes through the Service)", len(edges), edgeName)
		for _, e := range edges {
			if err := h.deliverThroughEdge(e); err != nil {
				return err
			}
		}
		if err := h.checkDeliveryPlane(); err != nil {
			return err
		}
	}
	if scaleUp != "" {
		if err := h.scale(scaleUp, "post-upgrade"); err != nil {
			return fmt.Errorf("scale-up: %w", err)
		}
	}
	if scaleDown != "" {
		if err := h.scale(scaleDown, "pre-upgrade"); err != nil {
			return fmt.Errorf("scale-down: %w", err)
		}
	}
	return h.stopAll()
}

func (h *harness) start(p *LocalPod) error {
	cmd, err := h.world.Command(p, p.Container, h.bin)
	if err != nil {
		return err
	}
	proc, err := h.sup.Start(p.Name, cmd)
	if err != nil {
		return err
	}
	h.procs[p.Name] = proc
	return nil
}

func (h *harness) waitProbes(pods []*LocalPod) error {
	deadline := time.Now().Add(h.timeout)
	for _, p := range pods {
		probes, err := p.Probes()
		if err != nil {
			return err
		}
		if len(probes) == 0 {
			return fmt.Errorf("pod %s has no probes", p.Name)
		}
		for _, pr := range probes {
			if err := WaitHTTP200(pr.URL, h.procs[p.Name], deadline); err != nil {
				return fmt.Errorf("pod %s %s probe: %w\n%s", p.Name, pr.Kind, err, Tail(h.procs[p.Name].Log, 15))
			}
		}
	}
	return nil
}

// findServiceAndKey finds the client gRPC Service (not headless, selects
// the nodes) and the first API key the nodes were given.
func (h *harness) findServiceAndKey(objects []Object) error {
	for _, o := range objects {
		svc, ok := o.Value.(*corev1.Service)
		if !ok || svc.Spec.ClusterIP == corev1.ClusterIPNone || !selects(svc.Spec.Selector, h.sts.Spec.Template.Labels) {
			continue
		}
		addrs := h.world.hosts[fmt.Sprintf("%s.%s.svc.%s", svc.Name, h.world.Namespace, h.world.Domain)]
		for _, p := range svc.Spec.Ports {
			if p.Name == "grpc" {
				h.service = addrs[p.Port]
			}
		}
	}
	if h.service == "" {
		return errors.New("no client Service with a grpc port selects the nodes")
	}
	cmd, err := h.world.Command(h.nodes[0], h.nodes[0].Container, h.bin)
	if err != nil {
		return err
	}
	for _, a := range cmd.Args {
		// A TLS cluster: publishers trust the cluster CA (herald --tls-ca).
		if path, ok := strings.CutPrefix(a, "--tls-ca="); ok && hasArg(h.nodes[0].Container, "--grpc-tls") {
			h.tlsCA = path
		}
	}
	for _, a := range cmd.Args {
		if path, ok := strings.CutPrefix(a, "--api-keys-file="); ok {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
					h.key = l
					return nil
				}
			}
		}
	}
	return errors.New("the node container has no --api-keys-file with a key")
}

func (h *harness) serverArgs() []string {
	out := []string{"--server", h.service, "--api-key", h.key}
	if h.tlsCA != "" {
		out = append(out, "--tls-ca", h.tlsCA)
	}
	return out
}

func (h *harness) cli(args ...string) (string, error) {
	cmd := &Command{
		Path: filepath.Join(h.bin, "herald"),
		Args: append(h.serverArgs(), args...),
		Env:  []string{"PATH=" + os.Getenv("PATH")},
	}
	out, err := RunOnce(cmd, 40*time.Second)
	if err != nil {
		return out, fmt.Errorf("herald %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return out, nil
}

func (h *harness) publish(how string) error {
	out, err := h.cli("publish", "chart-harness", `{"from":"helm/validate"}`)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(out, "offset ") {
		return fmt.Errorf("publish answered %q", out)
	}
	h.say("publish %s: %s", how, strings.TrimSpace(out))
	return nil
}

var memberLine = regexp.MustCompile(`(?m)^\s+(\d+)\s+(voter|learner)\s`)

// voters asks the cluster for its voter ids, until want or the deadline.
func (h *harness) waitVoters(want int) error {
	deadline := time.Now().Add(h.timeout)
	var last string
	for time.Now().Before(deadline) {
		out, err := h.cli("status")
		if err == nil {
			var voters []int
			for _, m := range memberLine.FindAllStringSubmatch(out, -1) {
				if m[2] == "voter" {
					id, _ := strconv.Atoi(m[1])
					voters = append(voters, id)
				}
			}
			sort.Ints(voters)
			ok := len(voters) == want
			for i, id := range voters {
				ok = ok && id == i+1
			}
			if ok {
				h.say("voters are 1..%d", want)
				return nil
			}
			last = out
		} else {
			last = err.Error()
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("voters did not become 1..%d; last status:\n%s", want, last)
}

// scale applies a render with a different node count the way Helm would:
// the pre-upgrade hook Job first (scale-down), then the StatefulSet (pods
// removed, added, one restarted with its new arguments), then the
// post-upgrade hook Job (scale-up).
func (h *harness) scale(path, hook string) error {
	objects, errs := LoadManifests([]string{path})
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := h.checkInterfaces(objects); err != nil {
		return err
	}
	h.world.Adopt(objects)
	sts, _ := find[appsv1.StatefulSet](objects, "herald-node")
	if sts == nil || sts.Name != h.sts.Name {
		return errors.New("the render has no StatefulSet of the same name")
	}
	var job *batchv1.Job
	for _, o := range objects {
		if j, ok := o.Value.(*batchv1.Job); ok && o.Hook == hook {
			job = j
		}
	}
	if job == nil {
		return fmt.Errorf("the render has no %s hook Job", hook)
	}
	previous := map[string]*LocalPod{}
	for _, p := range h.nodes {
		previous[p.Name] = p
	}
	if hook == "pre-upgrade" {
		if err := h.runJob(job); err != nil {
			return err
		}
	}
	pods, err := h.world.StatefulPods(sts, previous)
	if err != nil {
		return err
	}
	kept := map[string]bool{}
	for _, p := range pods {
		kept[p.Name] = true
	}
	for _, p := range h.nodes {
		if !kept[p.Name] {
			h.procs[p.Name].Stop(15 * time.Second)
			h.say("stopped %s (scaled away)", p.Name)
		}
	}
	// Pods whose arguments changed would roll; restarting the highest
	// surviving one proves the new arguments work on an existing disk.
	restart := len(previous) - 1
	if len(pods) < len(previous) {
		restart = len(pods) - 1
	}
	var fresh []*LocalPod
	for _, p := range pods {
		switch {
		case previous[p.Name] == nil:
			fresh = append(fresh, p)
			if err := h.start(p); err != nil {
				return err
			}
		case p.Ordinal == restart:
			h.procs[p.Name].Stop(15 * time.Second)
			if err := h.start(p); err != nil {
				return err
			}
			h.say("restarted %s with the new arguments", p.Name)
		}
	}
	h.nodes, h.sts = pods, sts
	if hook == "post-upgrade" {
		if len(fresh) == 0 {
			return errors.New("the scale-up render adds no pod")
		}
		if err := h.runJob(job); err != nil {
			return err
		}
	}
	if err := h.waitProbes(pods); err != nil {
		return err
	}
	if err := h.waitVoters(len(pods)); err != nil {
		return err
	}
	return h.publish(fmt.Sprintf("after scaling to %d nodes", len(pods)))
}

// runJob runs a hook Job's init containers in order, each retried until it
// succeeds (as the kubelet would), then its main container once.
func (h *harness) runJob(job *batchv1.Job) error {
	pod, err := h.world.JobPod(job.Name, &job.Spec.Template.Spec)
	if err != nil {
		return err
	}
	for _, c := range job.Spec.Template.Spec.InitContainers {
		cmd, err := h.world.Command(pod, c, h.bin)
		if err != nil {
			return err
		}
		deadline := time.Now().Add(3 * h.timeout)
		for attempt := 1; ; attempt++ {
			out, err := RunOnce(cmd, 40*time.Second)
			if err == nil {
				h.say("job %s: %s (attempt %d): %s", job.Name, c.Name, attempt, strings.TrimSpace(out))
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("job %s container %s: %v: %s", job.Name, c.Name, err, strings.TrimSpace(out))
			}
			time.Sleep(time.Second)
		}
	}
	for _, c := range job.Spec.Template.Spec.Containers {
		cmd, err := h.world.Command(pod, c, h.bin)
		if err != nil {
			return err
		}
		out, err := RunOnce(cmd, 40*time.Second)
		if err != nil {
			return fmt.Errorf("job %s container %s: %v: %s", job.Name, c.Name, err, strings.TrimSpace(out))
		}
	}
	return nil
}

// stopAll stops every pod with SIGTERM, as Kubernetes would, and fails if
// one does not exit cleanly within its grace period.
func (h *harness) stopAll() error {
	var bad []string
	names := make([]string, 0, len(h.procs))
	for n := range h.procs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := h.procs[n]
		if done, _ := p.Exited(); done {
			continue
		}
		p.Stop(30 * time.Second)
		if _, err := p.Exited(); err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v after SIGTERM\n%s", n, err, Tail(p.Log, 10)))
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "\n"))
	}
	h.say("every process stopped cleanly on SIGTERM")
	return nil
}
