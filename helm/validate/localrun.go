package main

// Rendered pods as local processes. Each pod gets its own loopback ports
// (one per container port), a temporary directory per volume, its
// downward-API values, and Secrets and ConfigMaps from the render (or
// fixtures for Secrets the user would provide). Every cluster DNS name the
// chart produces (pod names under the headless Service, Service names) is
// rewritten to the loopback port of the pod behind it; an address left
// unmapped fails the run, so the chart cannot name a host that would not
// resolve in the cluster either.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// World is the render being run: its objects, the namespace and cluster
// domain its names were rendered for, and the loopback address of every
// name that has been given one.
type World struct {
	Objects   []Object
	Namespace string
	Domain    string
	Dir       string
	// host name -> port -> local address
	hosts    map[string]map[int32]string
	fixtures map[string]string // "<secret>/<key>" -> fixture value
	ec       *ecdsa.PrivateKey
	// Output of `herald certs`: what a user puts in the certificates
	// Secret (ca.pem, node-<id>.pem, node-<id>-key.pem, edge.pem, ...).
	certs string
}

// IssueCerts writes a cluster CA and certificates for node ids 1..nodes
// and the edges with `herald certs`, as a user would before installing.
func (w *World) IssueCerts(bin string, nodes int) error {
	dir := filepath.Join(w.Dir, "certs")
	cmd := &Command{
		Path: filepath.Join(bin, "herald"),
		Args: []string{"certs", "--out", dir, "--nodes", fmt.Sprint(nodes)},
		Env:  []string{"PATH=" + os.Getenv("PATH")},
	}
	if out, err := RunOnce(cmd, 40*time.Second); err != nil {
		return fmt.Errorf("herald certs: %v: %s", err, out)
	}
	w.certs = dir
	return nil
}

// LocalPod is one pod of a rendered workload, ready to start.
type LocalPod struct {
	Name      string
	Ordinal   int
	Spec      *corev1.PodSpec
	Ports     map[int32]string // containerPort -> 127.0.0.1:p
	Dir       string
	Container corev1.Container // the main container
}

// NewWorld prepares a world for one render.
func NewWorld(objects []Object, namespace, domain, dir string) (*World, error) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &World{
		Objects: objects, Namespace: namespace, Domain: domain, Dir: dir,
		hosts: map[string]map[int32]string{}, fixtures: map[string]string{}, ec: ec,
	}, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func freeUDPPort() (string, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().String(), nil
}

// dnsNames lists the names a pod or Service answers to from inside the
// namespace: the fully qualified one and its shorter search-path forms.
func (w *World) dnsNames(first string) []string {
	full := fmt.Sprintf("%s.%s.svc.%s", first, w.Namespace, w.Domain)
	return []string{
		full,
		fmt.Sprintf("%s.%s.svc", first, w.Namespace),
		fmt.Sprintf("%s.%s", first, w.Namespace),
		first,
	}
}

// Adopt switches to another render of the same release. Secrets the chart
// generates with random values keep the values of the first render, as
// they do in a cluster (the chart reads them back with lookup).
func (w *World) Adopt(objects []Object) {
	old := map[string]*corev1.Secret{}
	for _, o := range w.Objects {
		if s, ok := o.Value.(*corev1.Secret); ok {
			old[s.Name] = s
		}
	}
	for i, o := range objects {
		if s, ok := o.Value.(*corev1.Secret); ok && old[s.Name] != nil {
			objects[i].Value = old[s.Name]
		}
	}
	w.Objects = objects
}

// StatefulPods creates (or recreates, keeping ports and data) the pods of a
// StatefulSet, registering their DNS names under its headless Service.
func (w *World) StatefulPods(sts *appsv1.StatefulSet, previous map[string]*LocalPod) ([]*LocalPod, error) {
	replicas := 1
	if sts.Spec.Replicas != nil {
		replicas = int(*sts.Spec.Replicas)
	}
	var pods []*LocalPod
	for i := 0; i < replicas; i++ {
		name := fmt.Sprintf("%s-%d", sts.Name, i)
		pod, err := w.newPod(name, i, &sts.Spec.Template.Spec, previous[name])
		if err != nil {
			return nil, err
		}
		for _, dns := range w.dnsNames(name + "." + sts.Spec.ServiceName) {
			w.hosts[dns] = pod.Ports
		}
		pods = append(pods, pod)
	}
	return pods, nil
}

// DeploymentPods creates n pods of a Deployment.
func (w *World) DeploymentPods(d *appsv1.Deployment, n int) ([]*LocalPod, error) {
	var pods []*LocalPod
	for i := 0; i < n; i++ {
		pod, err := w.newPod(fmt.Sprintf("%s-local-%d", d.Name, i), i, &d.Spec.Template.Spec, nil)
		if err != nil {
			return nil, err
		}
		pods = append(pods, pod)
	}
	return pods, nil
}

// JobPod creates the pod of a Job (hook Jobs run their init containers in
// order, then the main container).
func (w *World) JobPod(name string, spec *corev1.PodSpec) (*LocalPod, error) {
	return w.newPod(name, 0, spec, nil)
}

func (w *World) newPod(name string, ordinal int, spec *corev1.PodSpec, previous *LocalPod) (*LocalPod, error) {
	if len(spec.Containers) != 1 {
		return nil, fmt.Errorf("pod %s: %d containers; the harness runs pods of one main container", name, len(spec.Containers))
	}
	pod := &LocalPod{Name: name, Ordinal: ordinal, Spec: spec, Ports: map[int32]string{}, Container: spec.Containers[0]}
	if previous != nil {
		pod.Dir = previous.Dir
		pod.Ports = previous.Ports
	} else {
		pod.Dir = filepath.Join(w.Dir, name)
		if err := os.MkdirAll(pod.Dir, 0o755); err != nil {
			return nil, err
		}
	}
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		for _, p := range c.Ports {
			if _, ok := pod.Ports[p.ContainerPort]; ok {
				continue
			}
			free := freePort
			if p.Protocol == corev1.ProtocolUDP {
				free = freeUDPPort
			}
			addr, err := free()
			if err != nil {
				return nil, err
			}
			pod.Ports[p.ContainerPort] = addr
		}
	}
	return pod, nil
}

// MapServices points every rendered Service's names at one pod its
// selector matches, as a Service picks one: the second pod when there are
// several (for nodes, a likely follower, so edges and publishers exercise
// forwarding and the delivery plane, and a pod the scale scenario never
// restarts), else the first.
func (w *World) MapServices(pods map[string][]*LocalPod) {
	for _, o := range w.Objects {
		svc, ok := o.Value.(*corev1.Service)
		if !ok {
			continue
		}
		var target *LocalPod
		var tmpl *corev1.PodSpec
		for _, owner := range w.Objects {
			t, ok := podSpec(owner)
			if !ok || !selects(svc.Spec.Selector, t.Labels) || len(pods[owner.Name]) == 0 {
				continue
			}
			target, tmpl = pods[owner.Name][min(1, len(pods[owner.Name])-1)], &t.Spec
			break
		}
		if target == nil {
			continue
		}
		ports := map[int32]string{}
		for _, p := range svc.Spec.Ports {
			cp := resolvePort(tmpl, p.TargetPort)
			if addr, ok := target.Ports[cp]; ok {
				ports[p.Port] = addr
			}
		}
		for _, dns := range w.dnsNames(svc.Name) {
			w.hosts[dns] = ports
		}
	}
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func resolvePort(spec *corev1.PodSpec, port intstr.IntOrString) int32 {
	if port.Type == intstr.Int {
		return port.IntVal
	}
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Name == port.StrVal {
				return p.ContainerPort
			}
		}
	}
	return 0
}

// Probe is an HTTP probe resolved to a local URL.
type Probe struct {
	Kind string
	URL  string
}

// Probes resolves the main container's HTTP probes.
func (p *LocalPod) Probes() ([]Probe, error) {
	var out []Probe
	c := p.Container
	for _, pr := range []struct {
		kind  string
		probe *corev1.Probe
	}{{"startup", c.StartupProbe}, {"readiness", c.ReadinessProbe}, {"liveness", c.LivenessProbe}} {
		if pr.probe == nil {
			continue
		}
		if pr.probe.HTTPGet == nil {
			return nil, fmt.Errorf("pod %s: %s probe is not httpGet", p.Name, pr.kind)
		}
		port := resolvePort(p.Spec, pr.probe.HTTPGet.Port)
		addr, ok := p.Ports[port]
		if !ok {
			return nil, fmt.Errorf("pod %s: %s probe port %s is not a container port", p.Name, pr.kind, pr.probe.HTTPGet.Port.String())
		}
		out = append(out, Probe{pr.kind, "http://" + addr + pr.probe.HTTPGet.Path})
	}
	return out, nil
}

// Command is one container of a pod, mapped to run here.
type Command struct {
	Pod  string
	Name string
	Path string
	Args []string
	Env  []string
}

// Command maps a container of this pod: its command line with addresses
// and mount paths rewritten, and its environment resolved.
func (w *World) Command(p *LocalPod, c corev1.Container, bin string) (*Command, error) {
	if len(c.Command) == 0 {
		return nil, fmt.Errorf("pod %s container %s: no command (the image has no default the harness can know)", p.Name, c.Name)
	}
	env := map[string]string{}
	var order []string
	for _, e := range c.Env {
		v, err := w.envValue(p, c, e, env)
		if err != nil {
			return nil, err
		}
		env[e.Name] = v
		order = append(order, e.Name)
	}
	mounts, err := w.materializeVolumes(p, c, env)
	if err != nil {
		return nil, err
	}
	var line []string
	for _, a := range append(append([]string{}, c.Command...), c.Args...) {
		a = expandVars(a, env)
		a, err = w.rewrite(p, a)
		if err != nil {
			return nil, fmt.Errorf("pod %s container %s: %w", p.Name, c.Name, err)
		}
		line = append(line, rewritePaths(a, mounts))
	}
	// A clean environment: nothing of the CI machine's HERALD_* leaks in.
	procEnv := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + p.Dir, "HOSTNAME=" + p.Name}
	for _, k := range order {
		procEnv = append(procEnv, k+"="+env[k])
	}
	return &Command{Pod: p.Name, Name: c.Name, Path: filepath.Join(bin, line[0]), Args: line[1:], Env: procEnv}, nil
}

// expandVars applies Kubernetes' $(VAR) expansion ($$ escapes).
func expandVars(s string, env map[string]string) string {
	s = strings.ReplaceAll(s, "$$", "\x00")
	s = varRef.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		if v, ok := env[name]; ok {
			return v
		}
		return m
	})
	return strings.ReplaceAll(s, "\x00", "$")
}

// rewrite maps cluster addresses in one argument to loopback addresses.
func (w *World) rewrite(p *LocalPod, a string) (string, error) {
	names := make([]string, 0, len(w.hosts))
	for h := range w.hosts {
		names = append(names, h)
	}
	// Longest first, so a short search-path form never eats a longer name.
	sort.Slice(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
	for _, h := range names {
		for port, addr := range w.hosts[h] {
			a = replaceAddr(a, fmt.Sprintf("%s:%d", h, port), addr)
		}
	}
	for _, any := range []string{"0.0.0.0", "[::]"} {
		for port, addr := range p.Ports {
			a = replaceAddr(a, fmt.Sprintf("%s:%d", any, port), addr)
		}
	}
	if strings.Contains(a, ".svc") || strings.Contains(a, "0.0.0.0:") || strings.Contains(a, "[::]:") {
		return "", fmt.Errorf("argument %q names an address no rendered pod or Service answers to", a)
	}
	return a, nil
}

// replaceAddr replaces whole host:port tokens only (not a prefix of a
// longer port or host name).
func replaceAddr(s, from, to string) string {
	var out strings.Builder
	for {
		i := strings.Index(s, from)
		if i < 0 {
			out.WriteString(s)
			return out.String()
		}
		end := i + len(from)
		before := i == 0 || strings.ContainsRune("=,/ @", rune(s[i-1]))
		after := end == len(s) || strings.ContainsRune(",/ ", rune(s[end]))
		out.WriteString(s[:i])
		if before && after {
			out.WriteString(to)
		} else {
			out.WriteString(from)
		}
		s = s[end:]
	}
}

func rewritePaths(a string, mounts map[string]string) string {
	paths := make([]string, 0, len(mounts))
	for m := range mounts {
		paths = append(paths, m)
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, m := range paths {
		if i := strings.Index(a, m); i >= 0 && (i == 0 || a[i-1] == '=') {
			rest := a[i+len(m):]
			if rest == "" || rest[0] == '/' {
				return a[:i] + mounts[m] + rest
			}
		}
	}
	return a
}

// materializeVolumes gives every mount of the container a local
// directory, filled from the render's ConfigMaps and Secrets.
func (w *World) materializeVolumes(p *LocalPod, c corev1.Container, env map[string]string) (map[string]string, error) {
	volumes := map[string]corev1.Volume{}
	for _, v := range p.Spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		dir := filepath.Join(p.Dir, "volumes", m.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		// A subPath mounts one directory of the volume (with
		// subPathExpr, chosen by the pod's own variables).
		sub := m.SubPath
		if m.SubPathExpr != "" {
			sub = expandVars(m.SubPathExpr, env)
			if strings.Contains(sub, "$(") {
				return nil, fmt.Errorf("pod %s: subPathExpr %q names a variable the container does not set", p.Name, m.SubPathExpr)
			}
		}
		mounts[m.MountPath] = filepath.Join(dir, sub)
		v, ok := volumes[m.Name]
		if !ok {
			continue // a volumeClaimTemplate: an empty directory, kept across restarts
		}
		switch {
		case v.ConfigMap != nil:
			data, err := w.configMap(v.ConfigMap.Name)
			if err != nil {
				return nil, err
			}
			for _, it := range itemsOr(v.ConfigMap.Items, data) {
				val, ok := data[it.Key]
				if !ok {
					return nil, fmt.Errorf("pod %s: ConfigMap %s has no key %s", p.Name, v.ConfigMap.Name, it.Key)
				}
				if err := os.WriteFile(filepath.Join(dir, it.Path), []byte(val), 0o644); err != nil {
					return nil, err
				}
			}
		case v.Secret != nil:
			if err := w.secretItems(p, c, m, dir, sub, v.Secret.SecretName, v.Secret.Items); err != nil {
				return nil, err
			}
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				if src.Secret == nil {
					return nil, fmt.Errorf("pod %s: projected volume %s: only secret sources can run locally", p.Name, m.Name)
				}
				if err := w.secretItems(p, c, m, dir, sub, src.Secret.Name, src.Secret.Items); err != nil {
					return nil, err
				}
			}
		case v.EmptyDir != nil:
		default:
			return nil, fmt.Errorf("pod %s: volume %s: only configMap, secret and emptyDir volumes can run locally", p.Name, m.Name)
		}
	}
	return mounts, nil
}

// secretItems writes the items of one Secret into a volume directory.
func (w *World) secretItems(p *LocalPod, c corev1.Container, m corev1.VolumeMount, dir, sub, secret string, items []corev1.KeyToPath) error {
	if len(items) == 0 {
		return fmt.Errorf("pod %s: Secret volume %s without items: the harness cannot know its keys", p.Name, m.Name)
	}
	for _, it := range items {
		// The path the container sees, below its subPath.
		seen, below := strings.CutPrefix(it.Path, sub+"/")
		role := ""
		if sub == "" || below {
			if sub == "" {
				seen = it.Path
			}
			role = fileRole(c, m.MountPath+"/"+seen)
		}
		if role == "--api-keys-file" && hasArg(c, "--grpc-tls") {
			role = "--api-keys-file (TLS)"
		}
		val, err := w.secretValue(secret, it.Key, role)
		if err != nil {
			return err
		}
		path := filepath.Join(dir, it.Path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(val), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func hasArg(c corev1.Container, flag string) bool {
	for _, a := range c.Args {
		if a == flag {
			return true
		}
	}
	return false
}

func itemsOr(items []corev1.KeyToPath, data map[string]string) []corev1.KeyToPath {
	if len(items) > 0 {
		return items
	}
	var out []corev1.KeyToPath
	for k := range data {
		out = append(out, corev1.KeyToPath{Key: k, Path: k})
	}
	return out
}

// fileRole is the flag whose value is this path, e.g. "--api-keys-file".
func fileRole(c corev1.Container, path string) string {
	for i, a := range c.Args {
		name, value, ok := strings.Cut(a, "=")
		if ok && value == path {
			return name
		}
		if !ok && i+1 < len(c.Args) && c.Args[i+1] == path {
			return a
		}
	}
	return ""
}

func (w *World) configMap(name string) (map[string]string, error) {
	for _, o := range w.Objects {
		if cm, ok := o.Value.(*corev1.ConfigMap); ok && cm.Name == name {
			return cm.Data, nil
		}
	}
	return nil, fmt.Errorf("ConfigMap %s is not rendered", name)
}

// secretValue reads a rendered Secret, or makes up what a user would have
// put in a Secret the chart only refers to. What to make up follows from
// where the value goes (role: the flag or variable that consumes it); API
// keys are made consistent (the internal key is one of the accepted keys).
func (w *World) secretValue(name, key, role string) (string, error) {
	for _, o := range w.Objects {
		if s, ok := o.Value.(*corev1.Secret); ok && s.Name == name {
			if v, ok := s.Data[key]; ok {
				return string(v), nil
			}
			if v, ok := s.StringData[key]; ok {
				return v, nil
			}
			return "", fmt.Errorf("Secret %s has no key %s", name, key)
		}
	}
	id := name + "/" + key
	if v, ok := w.fixtures[id]; ok {
		return v, nil
	}
	if w.certs != "" && certsFile.MatchString(key) {
		b, err := os.ReadFile(filepath.Join(w.certs, key))
		if err != nil {
			return "", fmt.Errorf("Secret %s key %s: not a file `herald certs` wrote: %w", name, key, err)
		}
		return string(b), nil
	}
	publisher, internal := w.fixtureKeys(name)
	var v string
	switch role {
	case "--api-keys-file":
		v = publisher + "\nadmin+edge+node:" + internal + "\n"
	case "--api-keys-file (TLS)":
		// Nodes and edges prove their role with certificates.
		v = publisher + "\nadmin:" + internal + "\n"
	case "HERALD_API_KEY":
		v = internal
	case "--jwt-public-key-file":
		der, err := x509.MarshalPKIXPublicKey(&w.ec.PublicKey)
		if err != nil {
			return "", err
		}
		v = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	case "--jwks-file":
		pub, err := w.ec.PublicKey.ECDH()
		if err != nil {
			return "", err
		}
		raw := pub.Bytes() // 0x04 || X || Y
		jwk := map[string]any{"keys": []map[string]string{{
			"kty": "EC", "crv": "P-256", "kid": "ci", "alg": "ES256", "use": "sig",
			"x": base64.RawURLEncoding.EncodeToString(raw[1:33]),
			"y": base64.RawURLEncoding.EncodeToString(raw[33:]),
		}}}
		b, _ := json.Marshal(jwk)
		v = string(b)
	case "--tls-ca", "--tls-cert", "--tls-key":
		ca, cert, key, err := w.clusterTLS()
		if err != nil {
			return "", err
		}
		v = map[string]string{"--tls-ca": ca, "--tls-cert": cert, "--tls-key": key}[role]
	default:
		v = randomHex(32)
	}
	w.fixtures[id] = v
	return v, nil
}

// certsFile matches the names `herald certs` writes.
var certsFile = regexp.MustCompile(`^(ca|edge|node-[0-9]+)(-key)?\.pem$`)

func (w *World) fixtureKeys(secret string) (publisher, internal string) {
	p, ok := w.fixtures[secret+"/#publisher"]
	if !ok {
		p = "publisher-" + randomHex(16)
		w.fixtures[secret+"/#publisher"] = p
		w.fixtures[secret+"/#internal"] = "internal-" + randomHex(16)
	}
	return p, w.fixtures[secret+"/#internal"]
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (w *World) envValue(p *LocalPod, c corev1.Container, e corev1.EnvVar, earlier map[string]string) (string, error) {
	if e.ValueFrom == nil {
		return expandVars(e.Value, earlier), nil
	}
	switch {
	case e.ValueFrom.FieldRef != nil:
		switch e.ValueFrom.FieldRef.FieldPath {
		case "metadata.name":
			return p.Name, nil
		case "metadata.namespace":
			return w.Namespace, nil
		case "status.podIP", "status.hostIP":
			return "127.0.0.1", nil
		}
		return "", fmt.Errorf("env %s: fieldRef %s not supported locally", e.Name, e.ValueFrom.FieldRef.FieldPath)
	case e.ValueFrom.SecretKeyRef != nil:
		ref := e.ValueFrom.SecretKeyRef
		return w.secretValue(ref.Name, ref.Key, e.Name)
	case e.ValueFrom.ConfigMapKeyRef != nil:
		data, err := w.configMap(e.ValueFrom.ConfigMapKeyRef.Name)
		if err != nil {
			return "", err
		}
		return data[e.ValueFrom.ConfigMapKeyRef.Key], nil
	}
	return "", fmt.Errorf("env %s: valueFrom not supported locally", e.Name)
}

// clusterTLS makes the cluster CA and node certificate a user would put in
// the QUIC TLS Secret: the node certificate carries the DNS name
// herald-node and serves as both server and client certificate.
func (w *World) clusterTLS() (ca, cert, key string, err error) {
	if v, ok := w.fixtures["#tls-ca"]; ok {
		return v, w.fixtures["#tls-cert"], w.fixtures["#tls-key"], nil
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "harness cluster CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", err
	}
	nodeKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	nodeTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "herald-node"},
		DNSNames:     []string{"herald-node"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	nodeDER, err := x509.CreateCertificate(rand.Reader, nodeTmpl, caTmpl, &nodeKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(nodeKey)
	if err != nil {
		return "", "", "", err
	}
	ca = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	cert = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: nodeDER}))
	key = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	w.fixtures["#tls-ca"], w.fixtures["#tls-cert"], w.fixtures["#tls-key"] = ca, cert, key
	return ca, cert, key, nil
}
