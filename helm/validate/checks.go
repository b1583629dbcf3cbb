package main

// Checks across the documents of one render that no single API type can
// make: names are valid, every selector selects a rendered pod template,
// every named port, volume, ConfigMap and Secret key that is referenced
// exists, every $(VAR) in a command line is defined. Plus the rules the
// Raft charts learned the hard way (DESIGN.md, "Operations").

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

type bundle struct {
	objects         []Object
	externalSecrets map[string]bool
	errs            []error
}

func (b *bundle) fail(o Object, format string, args ...any) {
	b.errs = append(b.errs, fmt.Errorf("%s: %s %q: %s", o.Source, o.Kind, o.Name, fmt.Sprintf(format, args...)))
}

// CheckBundle runs every cross-document check on one render.
func CheckBundle(objects []Object, externalSecrets []string) []error {
	b := &bundle{objects: objects, externalSecrets: map[string]bool{}}
	for _, s := range externalSecrets {
		b.externalSecrets[s] = true
	}
	seen := map[string]Object{}
	for _, o := range objects {
		key := o.Kind + "/" + o.Name
		if prev, dup := seen[key]; dup {
			b.fail(o, "rendered twice (also %s)", prev.Source)
		}
		seen[key] = o
		b.errs = append(b.errs, checkCustomResource(o)...)
		b.checkMeta(o)
		if tmpl, ok := podSpec(o); ok {
			b.checkPod(o, tmpl)
		}
		switch v := o.Value.(type) {
		case *appsv1.StatefulSet:
			b.checkSelector(o, v.Spec.Selector, v.Spec.Template.Labels)
			b.checkStatefulSet(o, v)
			b.checkNodeCertificates(o, v)
		case *appsv1.Deployment:
			b.checkSelector(o, v.Spec.Selector, v.Spec.Template.Labels)
		case *corev1.Service:
			b.checkService(o, v)
		case *policyv1.PodDisruptionBudget:
			if len(b.podsSelectedBy(v.Spec.Selector)) == 0 {
				b.fail(o, "selector matches no rendered pod template")
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			ref := v.Spec.ScaleTargetRef
			if _, ok := b.find(ref.Kind, ref.Name); !ok {
				b.fail(o, "scaleTargetRef %s %q is not rendered", ref.Kind, ref.Name)
			}
		case *networkingv1.Ingress:
			for _, r := range v.Spec.Rules {
				if r.HTTP == nil {
					continue
				}
				for _, p := range r.HTTP.Paths {
					if s := p.Backend.Service; s != nil {
						b.checkServicePort(o, s.Name, s.Port.Name, s.Port.Number)
					}
				}
			}
		case *HTTPRoute:
			for _, r := range v.Spec.Rules {
				for _, ref := range r.BackendRefs {
					port := int32(0)
					if ref.Port != nil {
						port = *ref.Port
					}
					b.checkServicePort(o, ref.Name, "", port)
				}
			}
		case *networkingv1.NetworkPolicy:
			b.checkNetworkPolicy(o, v)
		case *ServiceMonitor:
			b.checkServiceMonitor(o, v)
		}
	}
	return b.errs
}

func (b *bundle) find(kind, name string) (Object, bool) {
	for _, o := range b.objects {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return Object{}, false
}

func (b *bundle) checkMeta(o Object) {
	var errs []string
	if o.Kind == "Service" {
		errs = validation.IsDNS1035Label(o.Name)
	} else {
		errs = validation.IsDNS1123Subdomain(o.Name)
	}
	for _, e := range errs {
		b.fail(o, "metadata.name: %s", e)
	}
	meta := objectMeta(o)
	if meta == nil {
		return
	}
	for k, v := range meta.Labels {
		for _, e := range validation.IsQualifiedName(k) {
			b.fail(o, "label key %q: %s", k, e)
		}
		for _, e := range validation.IsValidLabelValue(v) {
			b.fail(o, "label %s=%q: %s", k, v, e)
		}
	}
	for k := range meta.Annotations {
		for _, e := range validation.IsQualifiedName(strings.ToLower(k)) {
			b.fail(o, "annotation key %q: %s", k, e)
		}
	}
}

func objectMeta(o Object) *metav1.ObjectMeta {
	type hasMeta interface{ GetObjectMeta() metav1.Object }
	if m, ok := o.Value.(hasMeta); ok {
		if om, ok := m.GetObjectMeta().(*metav1.ObjectMeta); ok {
			return om
		}
	}
	return nil
}

func (b *bundle) checkSelector(o Object, sel *metav1.LabelSelector, podLabels map[string]string) {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		b.fail(o, "spec.selector: %v", err)
		return
	}
	if s.Empty() {
		b.fail(o, "spec.selector is empty")
	}
	if !s.Matches(labels.Set(podLabels)) {
		b.fail(o, "spec.selector does not match the pod template's labels")
	}
}

// podTemplates lists every rendered pod template with its owner.
func (b *bundle) podTemplates() []struct {
	owner Object
	tmpl  *corev1.PodTemplateSpec
} {
	var out []struct {
		owner Object
		tmpl  *corev1.PodTemplateSpec
	}
	for _, o := range b.objects {
		if t, ok := podSpec(o); ok {
			out = append(out, struct {
				owner Object
				tmpl  *corev1.PodTemplateSpec
			}{o, t})
		}
	}
	return out
}

func (b *bundle) podsSelectedBy(sel *metav1.LabelSelector) []*corev1.PodTemplateSpec {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() {
		return nil
	}
	var out []*corev1.PodTemplateSpec
	for _, p := range b.podTemplates() {
		if s.Matches(labels.Set(p.tmpl.Labels)) {
			out = append(out, p.tmpl)
		}
	}
	return out
}

func (b *bundle) podsWithLabels(sel map[string]string) []*corev1.PodTemplateSpec {
	if len(sel) == 0 {
		return nil
	}
	return b.podsSelectedBy(&metav1.LabelSelector{MatchLabels: sel})
}

func containerPortNamed(pods []*corev1.PodTemplateSpec, name string) bool {
	for _, p := range pods {
		for _, c := range p.Spec.Containers {
			for _, port := range c.Ports {
				if port.Name == name {
					return true
				}
			}
		}
	}
	return false
}

func (b *bundle) checkService(o Object, s *corev1.Service) {
	pods := b.podsWithLabels(s.Spec.Selector)
	if len(pods) == 0 {
		b.fail(o, "spec.selector matches no rendered pod template")
		return
	}
	for _, p := range s.Spec.Ports {
		for _, e := range validation.IsValidPortName(p.Name) {
			b.fail(o, "port name %q: %s", p.Name, e)
		}
		if p.TargetPort.Type == intstr.String && !containerPortNamed(pods, p.TargetPort.StrVal) {
			b.fail(o, "port %s: targetPort %q is no container port of the selected pods", p.Name, p.TargetPort.StrVal)
		}
	}
}

func (b *bundle) checkServicePort(o Object, service, portName string, portNumber int32) {
	so, ok := b.find("Service", service)
	if !ok {
		b.fail(o, "backend Service %q is not rendered", service)
		return
	}
	svc := so.Value.(*corev1.Service)
	for _, p := range svc.Spec.Ports {
		if (portName != "" && p.Name == portName) || (portName == "" && p.Port == portNumber) {
			return
		}
	}
	b.fail(o, "backend Service %q has no port %q/%d", service, portName, portNumber)
}

func (b *bundle) checkStatefulSet(o Object, s *appsv1.StatefulSet) {
	so, ok := b.find("Service", s.Spec.ServiceName)
	if !ok {
		b.fail(o, "spec.serviceName %q is not a rendered Service", s.Spec.ServiceName)
		return
	}
	svc := so.Value.(*corev1.Service)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		b.fail(o, "spec.serviceName %q is not headless", s.Spec.ServiceName)
	}
	// Peers must resolve each other before any of them is ready, or no
	// leader is ever elected (and no pod ever becomes ready).
	if !svc.Spec.PublishNotReadyAddresses {
		b.fail(o, "headless Service %q must set publishNotReadyAddresses: true", s.Spec.ServiceName)
	}
	if s.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		b.fail(o, "podManagementPolicy must be Parallel: ordered start waits for pod 0 to be ready, which needs a quorum")
	}
	for _, c := range s.Spec.Template.Spec.Containers {
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
			b.fail(o, "container %s: no preStop hook on Raft nodes (membership changes go through the Admin API)", c.Name)
		}
		if p := c.LivenessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "/healthz" {
			b.fail(o, "container %s: liveness must not depend on cluster health (probe /healthz, not %s)", c.Name, p.HTTPGet.Path)
		}
	}
}

func (b *bundle) checkNetworkPolicy(o Object, np *networkingv1.NetworkPolicy) {
	pods := b.podsSelectedBy(&np.Spec.PodSelector)
	if len(pods) == 0 {
		b.fail(o, "podSelector matches no rendered pod template")
	}
	for i, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			if p.Port != nil && p.Port.Type == intstr.String && !containerPortNamed(pods, p.Port.StrVal) {
				b.fail(o, "ingress[%d]: port %q is no container port of the selected pods", i, p.Port.StrVal)
			}
		}
	}
}

func (b *bundle) checkServiceMonitor(o Object, sm *ServiceMonitor) {
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		b.fail(o, "spec.selector: %v", err)
		return
	}
	for _, e := range sm.Spec.Endpoints {
		found := false
		for _, so := range b.objects {
			svc, ok := so.Value.(*corev1.Service)
			if !ok || !sel.Matches(labels.Set(svc.Labels)) {
				continue
			}
			for _, p := range svc.Spec.Ports {
				if p.Name == e.Port {
					found = true
				}
			}
		}
		if !found {
			b.fail(o, "endpoint port %q is on no selected Service", e.Port)
		}
	}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

func (b *bundle) checkPod(o Object, t *corev1.PodTemplateSpec) {
	spec := &t.Spec
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		b.checkVolumeSource(o, v)
	}
	claims := map[string]bool{}
	if s, ok := o.Value.(*appsv1.StatefulSet); ok {
		for _, c := range s.Spec.VolumeClaimTemplates {
			claims[c.Name] = true
		}
	}
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	names := map[string]bool{}
	for _, c := range all {
		if names[c.Name] {
			b.fail(o, "container name %q used twice", c.Name)
		}
		names[c.Name] = true
		for _, e := range validation.IsDNS1123Label(c.Name) {
			b.fail(o, "container name %q: %s", c.Name, e)
		}
		ports := map[string]bool{}
		for _, p := range c.Ports {
			for _, e := range validation.IsValidPortName(p.Name) {
				b.fail(o, "container %s port name %q: %s", c.Name, p.Name, e)
			}
			ports[p.Name] = true
		}
		for kind, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.Type == intstr.String && !ports[p.HTTPGet.Port.StrVal] {
				b.fail(o, "container %s %s probe: no port named %q", c.Name, kind, p.HTTPGet.Port.StrVal)
			}
		}
		for _, m := range c.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok && !claims[m.Name] {
				b.fail(o, "container %s mounts %q, which is neither a volume nor a volumeClaimTemplate", c.Name, m.Name)
			}
		}
		defined := map[string]bool{}
		for _, e := range c.Env {
			for _, msg := range validation.IsEnvVarName(e.Name) {
				b.fail(o, "container %s env %q: %s", c.Name, e.Name, msg)
			}
			defined[e.Name] = true
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				ref := e.ValueFrom.SecretKeyRef
				b.checkSecretKey(o, ref.Name, ref.Key, ref.Optional)
			}
			if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
				ref := e.ValueFrom.ConfigMapKeyRef
				b.checkConfigMapKey(o, ref.Name, ref.Key)
			}
		}
		for _, arg := range append(append([]string{}, c.Command...), c.Args...) {
			for _, m := range varRef.FindAllStringSubmatch(arg, -1) {
				if !defined[m[1]] {
					b.fail(o, "container %s: %q refers to $(%s), which its env does not define", c.Name, arg, m[1])
				}
			}
		}
	}
}

func (b *bundle) checkVolumeSource(o Object, v corev1.Volume) {
	if cm := v.ConfigMap; cm != nil {
		if len(cm.Items) == 0 {
			if _, ok := b.find("ConfigMap", cm.Name); !ok {
				b.fail(o, "volume %s: ConfigMap %q is not rendered", v.Name, cm.Name)
			}
		}
		for _, it := range cm.Items {
			b.checkConfigMapKey(o, cm.Name, it.Key)
		}
	}
	if s := v.Secret; s != nil {
		if len(s.Items) == 0 {
			b.checkSecretKey(o, s.SecretName, "", s.Optional)
		}
		for _, it := range s.Items {
			b.checkSecretKey(o, s.SecretName, it.Key, s.Optional)
		}
	}
}

func (b *bundle) checkConfigMapKey(o Object, name, key string) {
	co, ok := b.find("ConfigMap", name)
	if !ok {
		b.fail(o, "ConfigMap %q is not rendered", name)
		return
	}
	cm := co.Value.(*corev1.ConfigMap)
	if _, ok := cm.Data[key]; !ok {
		b.fail(o, "ConfigMap %q has no key %q", name, key)
	}
}

func (b *bundle) checkSecretKey(o Object, name, key string, optional *bool) {
	so, ok := b.find("Secret", name)
	if !ok {
		if !b.externalSecrets[name] && (optional == nil || !*optional) {
			b.fail(o, "Secret %q is neither rendered nor declared as provided by the user (-external-secret)", name)
		}
		return
	}
	if key == "" {
		return
	}
	s := so.Value.(*corev1.Secret)
	if _, ok := s.Data[key]; !ok {
		if _, ok := s.StringData[key]; !ok {
			b.fail(o, "Secret %q has no key %q", name, key)
		}
	}
}

// sortedKinds names the kinds of a render, for the summary line.
func sortedKinds(objects []Object) string {
	count := map[string]int{}
	for _, o := range objects {
		count[o.Kind]++
	}
	var out []string
	for k, n := range count {
		out = append(out, fmt.Sprintf("%s×%d", k, n))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// nodeCertKey is the Secret key `herald certs` gives node id's certificate.
var nodeCertKey = regexp.MustCompile(`^node-([0-9]+)\.pem$`)

// checkNodeCertificates: with --grpc-tls, each node pod must present its
// own certificate (herald://node/<ordinal+1>). A StatefulSet has one pod
// template, so the file behind --tls-cert must differ per pod through a
// subPathExpr, and the item each pod sees must be its node's.
func (b *bundle) checkNodeCertificates(o Object, sts *appsv1.StatefulSet) {
	spec := sts.Spec.Template.Spec
	if len(spec.Containers) == 0 || len(spec.Containers[0].Command) == 0 || spec.Containers[0].Command[0] != "herald-node" {
		return
	}
	c := spec.Containers[0]
	if !hasArg(c, "--grpc-tls") {
		return
	}
	certPath := ""
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--tls-cert="); ok {
			certPath = v
		}
	}
	if certPath == "" {
		b.fail(o, "--grpc-tls without --tls-cert=<path>")
		return
	}
	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if strings.HasPrefix(certPath, strings.TrimSuffix(m.MountPath, "/")+"/") {
			mount = m
		}
	}
	if mount == nil {
		b.fail(o, "--tls-cert %s is on no mounted volume", certPath)
		return
	}
	if mount.SubPathExpr != "$(POD_NAME)" {
		b.fail(o, "volume %s is mounted whole: every node pod would present the same certificate (mount its own directory with subPathExpr: $(POD_NAME))", mount.Name)
		return
	}
	rel := strings.TrimPrefix(certPath, strings.TrimSuffix(mount.MountPath, "/")+"/")
	type source struct {
		secret string
		items  []corev1.KeyToPath
	}
	var sources []source
	for _, v := range spec.Volumes {
		if v.Name != mount.Name {
			continue
		}
		if v.Secret != nil {
			sources = append(sources, source{v.Secret.SecretName, v.Secret.Items})
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret != nil {
					sources = append(sources, source{s.Secret.Name, s.Secret.Items})
				}
			}
		}
	}
	replicas := 1
	if sts.Spec.Replicas != nil {
		replicas = int(*sts.Spec.Replicas)
	}
	for i := 0; i < replicas; i++ {
		pod := fmt.Sprintf("%s-%d", sts.Name, i)
		want := pod + "/" + rel
		found := 0
		for _, s := range sources {
			for _, it := range s.items {
				if it.Path != want {
					continue
				}
				found++
				if m := nodeCertKey.FindStringSubmatch(it.Key); m != nil && m[1] != fmt.Sprint(i+1) {
					b.fail(o, "pod %s (node %d) mounts %s of Secret %s as its certificate: another node's", pod, i+1, it.Key, s.secret)
				}
			}
		}
		if found != 1 {
			b.fail(o, "pod %s finds %d files at %s in volume %s (want exactly its own certificate)", pod, found, want, mount.Name)
		}
	}
}
