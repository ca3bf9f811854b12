package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// Parse decodes a YAML or JSON VM spec. Field names are the API's JSON
// names (memoryMiB, cpuModel, ...); protobuf names (memory_mib) are also
// accepted. Unknown fields and values of the wrong type are reported all at
// once as a *ValidationError, e.g.
//
//	spec: unknown field "memoryMB" (did you mean "memoryMiB"?)
//
// A number given for a string field (size: 1073741824) is taken as its
// decimal text. When baseDir is not empty, relative paths in boot.kernel,
// boot.initrd, disks[].path and disks[].source are resolved against it (the directory of
// the spec file). Parse neither defaults nor validates: call Default and
// Validate next.
func Parse(data []byte, baseDir string) (*ferryv1.VMSpec, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("spec: invalid YAML/JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("spec: invalid YAML/JSON: %w", err)
	}
	if doc == nil {
		return nil, errors.New("spec: empty document: expected a mapping with at least name, vcpus, memoryMiB and boot")
	}
	var c collector
	md := (&ferryv1.VMSpec{}).ProtoReflect().Descriptor()
	doc = checkMessage(&c, "spec", md, doc)
	if err := c.err(); err != nil {
		return nil, err
	}
	clean, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("spec: re-encode: %w", err)
	}
	s := &ferryv1.VMSpec{}
	if err := protojson.Unmarshal(clean, s); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	if baseDir != "" {
		resolvePaths(s, baseDir)
	}
	return s, nil
}

// resolvePaths makes relative host paths absolute against baseDir.
func resolvePaths(s *ferryv1.VMSpec, baseDir string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(baseDir, p)
	}
	if b := s.GetBoot(); b != nil {
		b.Kernel = abs(b.Kernel)
		b.Initrd = abs(b.Initrd)
	}
	for _, d := range s.GetDisks() {
		if d != nil {
			d.Path = abs(d.Path)
			d.Source = abs(d.Source)
		}
	}
}

// checkMessage verifies that v is an object whose keys are fields of md
// with values of the right JSON type, recording violations under path. It
// returns v with numbers given for string fields converted to strings.
func checkMessage(c *collector, path string, md protoreflect.MessageDescriptor, v any) any {
	obj, ok := v.(map[string]any)
	if !ok {
		c.add(path, "must be a mapping of fields (%s), got %s", strings.Join(jsonNames(md), ", "), describe(v))
		return v
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		if fd == nil {
			if s := suggest(k, jsonNames(md)); s != "" {
				c.add(path, "unknown field %q (did you mean %q?)", k, s)
			} else {
				c.add(path, "unknown field %q (known fields: %s)", k, strings.Join(jsonNames(md), ", "))
			}
			continue
		}
		fpath := path + "." + fd.JSONName()
		val := obj[k]
		if val == nil {
			continue // null means "not set"
		}
		if fd.IsList() {
			arr, ok := val.([]any)
			if !ok {
				c.add(fpath, "must be a list, got %s", describe(val))
				continue
			}
			for i := range arr {
				arr[i] = checkValue(c, fmt.Sprintf("%s[%d]", fpath, i), fd, arr[i])
			}
			continue
		}
		obj[k] = checkValue(c, fpath, fd, val)
	}
	return obj
}

// checkValue checks one singular value of field fd.
func checkValue(c *collector, path string, fd protoreflect.FieldDescriptor, v any) any {
	switch fd.Kind() {
	case protoreflect.MessageKind:
		return checkMessage(c, path, fd.Message(), v)
	case protoreflect.StringKind:
		switch x := v.(type) {
		case string:
		case json.Number:
			return x.String()
		default:
			c.add(path, "must be a string, got %s (quote it in YAML)", describe(v))
		}
	case protoreflect.Int32Kind, protoreflect.Int64Kind:
		bits := 64
		if fd.Kind() == protoreflect.Int32Kind {
			bits = 32
		}
		var text string
		switch x := v.(type) {
		case json.Number:
			text = x.String()
		case string:
			text = strings.TrimSpace(x)
		}
		n, err := strconv.ParseInt(text, 10, bits)
		if err != nil {
			c.add(path, "must be a whole number (%d-bit), got %s", bits, describe(v))
			return v
		}
		return json.Number(strconv.FormatInt(n, 10))
	case protoreflect.BoolKind:
		if _, ok := v.(bool); !ok {
			c.add(path, "must be true or false, got %s", describe(v))
		}
	}
	return v
}

// describe renders a decoded JSON value for an error message.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(x)
	case json.Number:
		return x.String()
	case bool:
		return strconv.FormatBool(x)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

func jsonNames(md protoreflect.MessageDescriptor) []string {
	fs := md.Fields()
	out := make([]string, 0, fs.Len())
	for i := 0; i < fs.Len(); i++ {
		out = append(out, fs.Get(i).JSONName())
	}
	return out
}

// suggest returns the candidate closest to key (case-insensitive edit
// distance), or "" when none is close enough to be a likely typo.
func suggest(key string, candidates []string) string {
	best, bestD := "", -1
	lk := strings.ToLower(key)
	for _, c := range candidates {
		d := editDistance(lk, strings.ToLower(c))
		if bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	limit := len(key) / 3
	if limit < 2 {
		limit = 2
	}
	if bestD < 0 || bestD > limit {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
