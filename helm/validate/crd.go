package main

// The custom resources the chart can render, as the subset of their
// upstream schemas (field names and types copied from prometheus-operator
// v0.8x monitoring.coreos.com/v1 and Gateway API v1.2
// gateway.networking.k8s.io/v1) that a chart may use. Decoding is strict,
// so a field outside this subset fails too: add it here, from the upstream
// CRD, before the chart uses it.

import (
	"fmt"
	"regexp"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ServiceMonitor is monitoring.coreos.com/v1 ServiceMonitor.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ServiceMonitorSpec `json:"spec"`
}

// ServiceMonitorSpec is the part of the upstream spec the chart may use.
type ServiceMonitorSpec struct {
	JobLabel          string               `json:"jobLabel,omitempty"`
	TargetLabels      []string             `json:"targetLabels,omitempty"`
	PodTargetLabels   []string             `json:"podTargetLabels,omitempty"`
	Endpoints         []MonitorEndpoint    `json:"endpoints"`
	Selector          metav1.LabelSelector `json:"selector"`
	NamespaceSelector *NamespaceSelector   `json:"namespaceSelector,omitempty"`
	SampleLimit       *uint64              `json:"sampleLimit,omitempty"`
	AttachMetadata    *map[string]bool     `json:"attachMetadata,omitempty"`
}

// NamespaceSelector is prometheus-operator's namespace selector.
type NamespaceSelector struct {
	Any        bool     `json:"any,omitempty"`
	MatchNames []string `json:"matchNames,omitempty"`
}

// MonitorEndpoint is one scrape endpoint of a ServiceMonitor.
type MonitorEndpoint struct {
	Port              string              `json:"port,omitempty"`
	TargetPort        *intstr.IntOrString `json:"targetPort,omitempty"`
	Path              string              `json:"path,omitempty"`
	Scheme            string              `json:"scheme,omitempty"`
	Interval          string              `json:"interval,omitempty"`
	ScrapeTimeout     string              `json:"scrapeTimeout,omitempty"`
	HonorLabels       bool                `json:"honorLabels,omitempty"`
	Relabelings       []RelabelConfig     `json:"relabelings,omitempty"`
	MetricRelabelings []RelabelConfig     `json:"metricRelabelings,omitempty"`
}

// RelabelConfig is a Prometheus relabeling rule.
type RelabelConfig struct {
	SourceLabels []string `json:"sourceLabels,omitempty"`
	Separator    *string  `json:"separator,omitempty"`
	TargetLabel  string   `json:"targetLabel,omitempty"`
	Regex        string   `json:"regex,omitempty"`
	Modulus      uint64   `json:"modulus,omitempty"`
	Replacement  *string  `json:"replacement,omitempty"`
	Action       string   `json:"action,omitempty"`
}

// PrometheusRule is monitoring.coreos.com/v1 PrometheusRule.
type PrometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []RuleGroup `json:"groups"`
	} `json:"spec"`
}

// RuleGroup is one group of recording or alerting rules.
type RuleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Limit    *int   `json:"limit,omitempty"`
	Rules    []Rule `json:"rules"`
}

// Rule is one recording or alerting rule.
type Rule struct {
	Record        string             `json:"record,omitempty"`
	Alert         string             `json:"alert,omitempty"`
	Expr          intstr.IntOrString `json:"expr"`
	For           string             `json:"for,omitempty"`
	KeepFiringFor string             `json:"keep_firing_for,omitempty"`
	Labels        map[string]string  `json:"labels,omitempty"`
	Annotations   map[string]string  `json:"annotations,omitempty"`
}

// HTTPRoute is gateway.networking.k8s.io/v1 HTTPRoute.
type HTTPRoute struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              HTTPRouteSpec `json:"spec"`
}

// HTTPRouteSpec is the part of the upstream spec the chart may use.
type HTTPRouteSpec struct {
	ParentRefs []ParentReference `json:"parentRefs,omitempty"`
	Hostnames  []string          `json:"hostnames,omitempty"`
	Rules      []HTTPRouteRule   `json:"rules,omitempty"`
}

// ParentReference names the Gateway (or listener) a route attaches to.
type ParentReference struct {
	Group       *string `json:"group,omitempty"`
	Kind        *string `json:"kind,omitempty"`
	Namespace   *string `json:"namespace,omitempty"`
	Name        string  `json:"name"`
	SectionName *string `json:"sectionName,omitempty"`
	Port        *int32  `json:"port,omitempty"`
}

// HTTPRouteRule is one rule of a route.
type HTTPRouteRule struct {
	Name        *string           `json:"name,omitempty"`
	Matches     []HTTPRouteMatch  `json:"matches,omitempty"`
	BackendRefs []HTTPBackendRef  `json:"backendRefs,omitempty"`
	Timeouts    *HTTPRouteTimeout `json:"timeouts,omitempty"`
}

// HTTPRouteMatch selects requests by path.
type HTTPRouteMatch struct {
	Path *struct {
		Type  *string `json:"type,omitempty"`
		Value *string `json:"value,omitempty"`
	} `json:"path,omitempty"`
}

// HTTPBackendRef is a Service a rule forwards to.
type HTTPBackendRef struct {
	Group     *string `json:"group,omitempty"`
	Kind      *string `json:"kind,omitempty"`
	Name      string  `json:"name"`
	Namespace *string `json:"namespace,omitempty"`
	Port      *int32  `json:"port,omitempty"`
	Weight    *int32  `json:"weight,omitempty"`
}

// HTTPRouteTimeout bounds requests; "0s" disables the bound.
type HTTPRouteTimeout struct {
	Request        *string `json:"request,omitempty"`
	BackendRequest *string `json:"backendRequest,omitempty"`
}

// Durations as the Prometheus Operator and Gateway API CRDs accept them.
var (
	promDuration    = regexp.MustCompile(`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`)
	gatewayDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)
	metricName      = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
)

// checkCustomResource applies the CRDs' own validation (patterns, enums,
// required fields) beyond what strict decoding checks.
func checkCustomResource(o Object) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s %q: %s", o.Source, o.Kind, o.Name, fmt.Sprintf(format, args...)))
	}
	switch v := o.Value.(type) {
	case *ServiceMonitor:
		if len(v.Spec.Endpoints) == 0 {
			bad("spec.endpoints: at least one endpoint")
		}
		for i, e := range v.Spec.Endpoints {
			if e.Interval != "" && !promDuration.MatchString(e.Interval) {
				bad("spec.endpoints[%d].interval: %q is not a duration", i, e.Interval)
			}
			if e.Port == "" && e.TargetPort == nil {
				bad("spec.endpoints[%d]: port or targetPort required", i)
			}
		}
	case *PrometheusRule:
		if len(v.Spec.Groups) == 0 {
			bad("spec.groups: empty")
		}
		for _, g := range v.Spec.Groups {
			for j, r := range g.Rules {
				if (r.Alert == "") == (r.Record == "") {
					bad("group %s rule %d: exactly one of alert and record", g.Name, j)
				}
				if r.Record != "" && !metricName.MatchString(r.Record) {
					bad("group %s rule %d: record %q is not a metric name", g.Name, j, r.Record)
				}
				if r.Expr.String() == "" {
					bad("group %s rule %d: empty expr", g.Name, j)
				}
				if r.For != "" && !promDuration.MatchString(r.For) {
					bad("group %s rule %d: for %q is not a duration", g.Name, j, r.For)
				}
			}
		}
	case *HTTPRoute:
		if len(v.Spec.ParentRefs) == 0 {
			bad("spec.parentRefs: a route attaches to at least one Gateway")
		}
		for i, r := range v.Spec.Rules {
			if t := r.Timeouts; t != nil {
				for _, d := range []*string{t.Request, t.BackendRequest} {
					if d != nil && !gatewayDuration.MatchString(*d) {
						bad("spec.rules[%d].timeouts: %q is not a Gateway API duration", i, *d)
					}
				}
			}
			for _, m := range r.Matches {
				if m.Path != nil && m.Path.Type != nil {
					switch *m.Path.Type {
					case "Exact", "PathPrefix", "RegularExpression":
					default:
						bad("spec.rules[%d].matches.path.type: %q", i, *m.Path.Type)
					}
				}
			}
		}
	}
	return errs
}
