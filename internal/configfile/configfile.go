// Package configfile gives every flag of a command a key in a YAML file:
// the key is the flag's name, the file's values apply to the flags the
// command line did not set (flags override the file), and Effective renders
// the resulting configuration as YAML.
package configfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// ErrUnknownKey is returned by Apply for a key that names no flag.
var ErrUnknownKey = errors.New("unknown config key")

// Skip are the flags that have no config key (they choose or print the file).
var Skip = map[string]bool{"config": true, "print-config": true, "help": true}

// Load reads path. A missing file is not an error when optional is set (the
// default path of a package install may be absent); it returns nil then.
func Load(path string, optional bool) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if optional && errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: not YAML: %w", path, err)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("config %s: the top level must be a mapping of flag names to values: %w", path, err)
	}
	return m, nil
}

// Apply sets every flag of fs named by a key of m, unless the command line
// set it already. Lists set repeatable and comma-separated flags; other
// values are given as they would be on the command line ("30s", 5, true).
// A key naming no flag, or a value the flag rejects, is an error naming the
// key and the file.
func Apply(fs *pflag.FlagSet, m map[string]any, path string) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || Skip[k] {
			errs = append(errs, fmt.Errorf("config %s: %w %q: the keys are the flag names without dashes (see --help)", path, ErrUnknownKey, k))
			continue
		}
		if f.Changed {
			continue // the command line wins
		}
		if err := set(f, m[k]); err != nil {
			errs = append(errs, fmt.Errorf("config %s: key %s: %w", path, k, err))
		}
	}
	return errors.Join(errs...)
}

func set(f *pflag.Flag, v any) error {
	if list, ok := v.([]any); ok {
		ss := make([]string, len(list))
		for i, e := range list {
			ss[i] = scalar(e)
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			return sv.Replace(ss)
		}
		return fmt.Errorf("takes one value, not a list")
	}
	if _, ok := v.(map[string]any); ok {
		return fmt.Errorf("takes a value, not a mapping")
	}
	if sv, ok := f.Value.(pflag.SliceValue); ok && v != nil {
		return sv.Replace([]string{scalar(v)})
	}
	return f.Value.Set(scalar(v))
}

func scalar(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	default:
		return fmt.Sprint(x)
	}
}

// Effective renders the value of every flag of fs (except Skip) as YAML, in
// the form Apply reads back.
func Effective(fs *pflag.FlagSet) ([]byte, error) {
	m := map[string]any{}
	fs.VisitAll(func(f *pflag.Flag) {
		if Skip[f.Name] {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			l := sv.GetSlice()
			if l == nil {
				l = []string{}
			}
			m[f.Name] = l
			return
		}
		s := f.Value.String()
		switch t := f.Value.Type(); {
		case t == "bool":
			b, err := strconv.ParseBool(s)
			if err == nil {
				m[f.Name] = b
				return
			}
		case strings.HasPrefix(t, "int") || strings.HasPrefix(t, "uint") || strings.HasPrefix(t, "float"):
			if n, err := strconv.ParseFloat(s, 64); err == nil {
				m[f.Name] = json.Number(strconv.FormatFloat(n, 'f', -1, 64))
				return
			}
		}
		m[f.Name] = s
	})
	j, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	return yaml.JSONToYAML(j)
}
