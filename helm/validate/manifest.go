package main

// Strict decoding of rendered manifests into the Kubernetes API types of
// one Kubernetes version (the k8s.io/api release in go.mod): a field the
// API does not have, a value of the wrong type, or a duplicate key fails.

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// KubernetesVersion is the API version the manifests are checked against;
// it must match the k8s.io/api release in go.mod (v0.33.x = 1.33).
const KubernetesVersion = "1.33"

// Object is one decoded manifest.
type Object struct {
	Source string // file and document number, for messages
	Kind   string
	Name   string
	Hook   string // helm.sh/hook annotation, if any
	Value  any    // pointer to the typed object
}

// kinds maps apiVersion/kind to a constructor of its typed object. A kind
// missing here is an error: the chart must not render what is not checked.
var kinds = map[string]func() any{
	"v1/ConfigMap":                            func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                               func() any { return &corev1.Secret{} },
	"v1/Service":                              func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                       func() any { return &corev1.ServiceAccount{} },
	"apps/v1/StatefulSet":                     func() any { return &appsv1.StatefulSet{} },
	"apps/v1/Deployment":                      func() any { return &appsv1.Deployment{} },
	"batch/v1/Job":                            func() any { return &batchv1.Job{} },
	"policy/v1/PodDisruptionBudget":           func() any { return &policyv1.PodDisruptionBudget{} },
	"autoscaling/v2/HorizontalPodAutoscaler":  func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	"networking.k8s.io/v1/Ingress":            func() any { return &networkingv1.Ingress{} },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return &networkingv1.NetworkPolicy{} },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return &ServiceMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return &PrometheusRule{} },
	"gateway.networking.k8s.io/v1/HTTPRoute":  func() any { return &HTTPRoute{} },
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// LoadManifests reads every document of every file, strictly.
func LoadManifests(paths []string) ([]Object, []error) {
	var objects []Object
	var errs []error
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i, doc := range docSeparator.Split(string(data), -1) {
			if isBlank(doc) {
				continue
			}
			source := fmt.Sprintf("%s#%d", path, i)
			obj, err := decode(source, []byte(doc))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			objects = append(objects, obj)
		}
	}
	return objects, errs
}

func isBlank(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

func decode(source string, doc []byte) (Object, error) {
	var meta struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return Object{}, fmt.Errorf("%s: not YAML: %w", source, err)
	}
	key := meta.APIVersion + "/" + meta.Kind
	ctor, ok := kinds[key]
	if !ok {
		return Object{}, fmt.Errorf("%s: %s %q: kind not known to the validator", source, key, meta.Metadata.Name)
	}
	value := ctor()
	if err := yaml.UnmarshalStrict(doc, value); err != nil {
		return Object{}, fmt.Errorf("%s: %s %q: %w", source, meta.Kind, meta.Metadata.Name, err)
	}
	// Decoding only proves the fields exist; encoding back and comparing
	// catches values the decoder silently coerced or dropped.
	if err := roundTrip(doc, value); err != nil {
		return Object{}, fmt.Errorf("%s: %s %q: %w", source, meta.Kind, meta.Metadata.Name, err)
	}
	return Object{
		Source: source,
		Kind:   meta.Kind,
		Name:   meta.Metadata.Name,
		Hook:   meta.Metadata.Annotations["helm.sh/hook"],
		Value:  value,
	}, nil
}

// roundTrip fails when a value that was written does not survive a decode
// and encode (a null where an object belongs, an empty key, and so on).
func roundTrip(doc []byte, value any) error {
	var written, kept any
	if err := yaml.Unmarshal(doc, &written); err != nil {
		return err
	}
	out, err := yaml.Marshal(value)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(out, &kept); err != nil {
		return err
	}
	var missing []string
	lost("", written, kept, &missing)
	if len(missing) > 0 {
		return fmt.Errorf("values lost when decoded: %s", strings.Join(missing, ", "))
	}
	return nil
}

// lost lists paths set in written that kept does not have. Empty values
// (false, 0, "", {}, []) may be dropped by omitempty and are not reported.
func lost(path string, written, kept any, out *[]string) {
	switch w := written.(type) {
	case map[string]any:
		k, _ := kept.(map[string]any)
		for key, v := range w {
			if isEmpty(v) {
				continue
			}
			if path == "" && key == "status" {
				continue
			}
			kv, ok := k[key]
			if !ok {
				*out = append(*out, path+"."+key)
				continue
			}
			lost(path+"."+key, v, kv, out)
		}
	case []any:
		k, _ := kept.([]any)
		for i, v := range w {
			if i >= len(k) {
				*out = append(*out, fmt.Sprintf("%s[%d]", path, i))
				continue
			}
			lost(fmt.Sprintf("%s[%d]", path, i), v, k[i], out)
		}
	}
}

func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case bool:
		return !x
	case float64:
		return x == 0
	case string:
		return x == ""
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}

// podSpec returns the pod template of a workload, if it is one.
func podSpec(o Object) (*corev1.PodTemplateSpec, bool) {
	switch v := o.Value.(type) {
	case *appsv1.StatefulSet:
		return &v.Spec.Template, true
	case *appsv1.Deployment:
		return &v.Spec.Template, true
	case *batchv1.Job:
		return &v.Spec.Template, true
	}
	return nil, false
}
