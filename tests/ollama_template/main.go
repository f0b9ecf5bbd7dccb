// Command ollama_template runs an Ollama Modelfile TEMPLATE through Go's text/template with the data
// Ollama's server gives a template for a chat request, and prints the prompt. tests/test_ollama.py
// builds and runs it; it uses the standard library only.
//
// Input on stdin, JSON:
//
//	{"template": "...", "system": "Modelfile SYSTEM or empty", "think": null | true | false,
//	 "messages": [{"role": "user", "content": "...", "images": 1, "thinking": ""}]}
//
// What it does as Ollama's server does before and while executing a template:
//   - the Modelfile SYSTEM goes first when the request's first message is not a system message;
//   - each image becomes a marker [img-N], N counting images over the whole conversation: it takes
//     the place of the first "[img]" in the message text, else it goes before the text;
//   - consecutive messages of one role (tool messages excepted) are merged with a blank line
//     between them, and the system messages' texts, joined the same way, are .System;
//   - the template is parsed with missingkey=zero and a json function, and sees .System,
//     .Messages (with .Role, .Content, .Thinking, .Images, .ToolCalls, .ToolName), .Tools,
//     .Prompt, .Response (empty), .Think and .IsThinkSet.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/template"
)

type toolCall struct {
	Function struct {
		Name      string         `json:"name"`
		Arguments map[string]any `json:"arguments"`
	} `json:"function"`
}

// message has the fields a template can read from one of Ollama's chat messages.
type message struct {
	Role      string
	Content   string
	Thinking  string
	Images    []string
	ToolCalls []toolCall
	ToolName  string
}

type inputMessage struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Images    int        `json:"images"`
	Thinking  string     `json:"thinking"`
	ToolCalls []toolCall `json:"tool_calls"`
	ToolName  string     `json:"tool_name"`
}

type request struct {
	Template string         `json:"template"`
	System   string         `json:"system"`
	Think    *bool          `json:"think"`
	Messages []inputMessage `json:"messages"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ollama_template:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	var req request
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	funcs := template.FuncMap{"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		return err
	}
	system, messages := merge(withImageMarkers(withSystem(req.Messages, req.System)))
	return tmpl.Execute(out, map[string]any{
		"System":     system,
		"Messages":   messages,
		"Tools":      nil,
		"Prompt":     "",
		"Response":   "",
		"Think":      req.Think != nil && *req.Think,
		"IsThinkSet": req.Think != nil,
	})
}

// withSystem puts the Modelfile's SYSTEM first unless the request starts with its own.
func withSystem(msgs []inputMessage, system string) []inputMessage {
	if system == "" || (len(msgs) > 0 && msgs[0].Role == "system") {
		return msgs
	}
	return append([]inputMessage{{Role: "system", Content: system}}, msgs...)
}

// withImageMarkers writes each image's [img-N] into its message's text.
func withImageMarkers(msgs []inputMessage) []message {
	out := make([]message, len(msgs))
	n := 0
	for i, m := range msgs {
		prefix, text := "", m.Content
		var images []string
		for j := 0; j < m.Images; j++ {
			marker := fmt.Sprintf("[img-%d]", n)
			images = append(images, marker)
			n++
			if strings.Contains(text, "[img]") {
				text = strings.Replace(text, "[img]", marker, 1)
			} else {
				prefix += marker
			}
		}
		out[i] = message{Role: m.Role, Content: prefix + text, Thinking: m.Thinking, Images: images,
			ToolCalls: m.ToolCalls, ToolName: m.ToolName}
	}
	return out
}

// merge joins consecutive messages of one role (not tool) and collects the system texts.
func merge(msgs []message) (string, []*message) {
	var system []string
	var merged []*message
	for i := range msgs {
		m := &msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if k := len(merged); k > 0 && merged[k-1].Role == m.Role && m.Role != "tool" {
			merged[k-1].Content += "\n\n" + m.Content
			continue
		}
		merged = append(merged, m)
	}
	return strings.Join(system, "\n\n"), merged
}
